"""Model dimensions and analytic parameter counts from a `config.json`, without torch.

`dims_from_config(config)` reads a Hugging Face config (flat, or nested with `text_config` /
`vision_config`) and returns `ArchDims`: the text stack's shape, the vision tower (Qwen2-VL,
Qwen2.5-VL, Gemma-3 SigLIP) or audio encoder (Whisper, wav2vec2) beside it, per-component parameter
counts and every `nn.Linear` the model holds (what peft's `all-linear` wraps, minus the output head).
Keys a published config leaves out take transformers' defaults for that `model_type`; a key with no
default raises a UserError that names it. The counts match the meta-device counts in
shared/reference/model-configs to the parameter (tests/catalog/test_architecture.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from automodel.catalog.arch_families import fused_family
from automodel.catalog.errors import UserError
from automodel.catalog.towers import AudioDims, VisionDims, audio_dims, vision_dims

Component = Literal["text", "vision", "audio"]

# transformers' `tie_word_embeddings` default per model_type (PretrainedConfig's own default is True).
TIED_BY_DEFAULT = frozenset({"bloom", "gpt2", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3small", "whisper"})
# Gemma3TextConfig defaults the published multimodal configs rely on.
_GEMMA3_TEXT_DEFAULTS: dict[str, object] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 4096,
    "sliding_window_pattern": 6, "tie_word_embeddings": True,
}
# transformers' activation defaults where a config leaves `hidden_act` out.
_DEFAULT_ACT = {"phi": "gelu_new", "gpt2": "gelu_new", "gpt_neox": "gelu", "gemma": "gelu_pytorch_tanh", "gemma2": "gelu_pytorch_tanh",
                "gemma3": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh", "bloom": "gelu"}


# Config integers that are sizes or divisors; every other count read here may be 0 but never negative.
_POSITIVE_KEYS = frozenset({
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers", "vocab_size",
    "intermediate_size", "d_model", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
    "decoder_sparse_step", "sliding_window_pattern",
})


# transformers 5 models without an SDPA attention path (`_supports_sdpa` False on their model class): the
# engine runs them with eager attention, which materialises the seq x seq scores. The one list: the engine
# (trainer/modeling.py, recipe.py), the simulator and the analytic estimate all read it, and
# tests/trainer/test_modeling.py checks it against transformers for every catalog architecture.
EAGER_ATTENTION = frozenset({"gemma2", "bloom"})


def attention_implementation(model_type: str, requested: str = "sdpa") -> str:
    """The attention the engine runs: `requested`, except sdpa on a model without an SDPA path -> eager."""
    return "eager" if requested == "sdpa" and model_type in EAGER_ATTENTION else requested


@dataclass(frozen=True)
class LinearLayer:
    """One kind of nn.Linear: its leaf name (what peft target names match), shape and how many exist."""

    name: str
    in_features: int
    out_features: int
    count: int
    bias: bool
    component: Component

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class ParamCounts:
    """Parameters per component; `total` counts shared (tied) tensors once, like the meta-device count."""

    embedding: int  # token (and learned position) embeddings of the text stack
    layers: int  # all decoder (or encoder) blocks of the text stack
    final_norm: int
    lm_head: int  # 0 when tied to the embedding
    vision: int  # vision tower + projector
    audio: int  # audio encoder (Whisper encoder, wav2vec2 feature extractor + positional conv)
    other: int = 0  # anything else (wav2vec2 masked_spec_embed)

    @property
    def total(self) -> int:
        return self.embedding + self.layers + self.final_norm + self.lm_head + self.vision + self.audio + self.other


@dataclass(frozen=True)
class ArchDims:
    """The shape of a model, as the memory estimator needs it. Text fields describe the language stack
    (for Whisper, the decoder; for wav2vec2, the transformer encoder)."""

    model_type: str
    kind: Literal["decoder", "encoder-decoder", "encoder"]
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    mlp: Literal["gated", "plain"]
    norm: Literal["rms", "layer"]
    norms_per_layer: int  # 2 (pre-attention, pre-MLP) or 4 (Gemma 2/3 sandwich norms)
    qk_norm: bool  # per-head q/k RMSNorm (Qwen3, Gemma 3)
    cross_attention: bool  # decoder layers attend to encoder states (Whisper)
    num_experts: int  # 0 for dense models
    experts_per_tok: int
    moe_intermediate: int
    shared_expert_intermediate: int
    moe_layers: int  # how many of `layers` are sparse
    sliding_window: int | None
    sliding_layers: int  # layers that attend within `sliding_window` only
    params: ParamCounts
    linears: tuple[LinearLayer, ...]
    vision: VisionDims | None = None
    audio: AudioDims | None = None
    hidden_act: str = "silu"  # the MLP activation (how many tensors autograd keeps depends on it)

    @property
    def total_params(self) -> int:
        return self.params.total

    @property
    def params_per_layer(self) -> int:
        return self.params.layers // self.layers

    @property
    def active_params(self) -> int:
        """Parameters one token touches (MoE: only `experts_per_tok` experts per sparse layer)."""
        if not self.num_experts:
            return self.total_params
        idle = self.num_experts - self.experts_per_tok
        return self.total_params - self.moe_layers * idle * 3 * self.hidden * self.moe_intermediate

    def linear_params(self, targets: tuple[str, ...] | Literal["all-linear"]) -> int:
        """Parameters of the linears LoRA would wrap for these targets."""
        return sum(lin.params for lin in self.matched_linears(targets))

    def unknown_targets(self, targets: tuple[str, ...] | Literal["all-linear"]) -> tuple[str, ...]:
        """Target names that match no linear of this model (peft ignores them, or fails if none match)."""
        if targets == "all-linear":
            return ()
        known = {lin.name for lin in self.linears}
        return tuple(t for t in targets if t not in known)

    def matched_linears(self, targets: tuple[str, ...] | Literal["all-linear"]) -> tuple[LinearLayer, ...]:
        """peft semantics: `all-linear` is every nn.Linear but the output head; names match leaf names."""
        if targets == "all-linear":
            return self.linears
        return tuple(lin for lin in self.linears if lin.name in targets)


class _Cfg:
    """Typed reads from a config dict: a missing key without a default names itself in a UserError."""

    def __init__(self, data: dict[str, object], where: str, defaults: dict[str, object] | None = None) -> None:
        self.data = {k: v for k, v in data.items() if v is not None}
        self.where = where
        self.defaults = defaults or {}

    def has(self, key: str) -> bool:
        return key in self.data or key in self.defaults

    def raw(self, key: str, default: object = ...) -> object:
        if key in self.data:
            return self.data[key]
        if key in self.defaults:
            return self.defaults[key]
        if default is ...:
            raise UserError(
                f"config has no `{key}` and no default is known for model_type `{self.data.get('model_type')}`",
                field=f"{self.where}{key}",
                hint="pass the model's full config.json (as published on the Hub)",
            )
        return default

    def int(self, key: str, default: object = ...) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise UserError(f"expected an integer, got {value!r}", field=f"{self.where}{key}")
        least = 1 if key in _POSITIVE_KEYS else 0  # sizes and divisors: 0 heads would divide by zero
        if value < least:
            raise UserError(f"must be at least {least}, got {value!r}", field=f"{self.where}{key}",
                            hint="pass the model's config.json as published on the Hub")
        return int(value)

    def bool(self, key: str, default: object = ...) -> bool:
        return bool(self.raw(key, default))

    def str(self, key: str, default: object = ...) -> str:
        return str(self.raw(key, default))


def _text_cfg(config: dict[str, object]) -> tuple[_Cfg, str]:
    """The language model's config: flat configs as they are; nested `text_config` over the top level."""
    if not isinstance(config, dict):
        raise UserError("a model config must be a mapping (the contents of config.json)", field="config")
    model_type = str(config.get("model_type", ""))
    nested = config.get("text_config")
    data = dict(config)
    defaults: dict[str, object] = {}
    if isinstance(nested, dict):
        data.update(nested)
        data["model_type"] = model_type
    if model_type in ("gemma3", "gemma3_text"):
        defaults = dict(_GEMMA3_TEXT_DEFAULTS)
    if model_type == "gemma3" and "tie_word_embeddings" in config:
        data["tie_word_embeddings"] = config["tie_word_embeddings"]
    defaults.setdefault("tie_word_embeddings", model_type in TIED_BY_DEFAULT)
    where = "config.text_config." if isinstance(nested, dict) else "config."
    return _Cfg(data, where, defaults), model_type


def dims_from_config(config: dict[str, object]) -> ArchDims:
    """Dimensions and analytic parameter counts of the model a config describes."""
    text, model_type = _text_cfg(config)
    if not model_type:
        raise UserError("config has no `model_type`", field="config.model_type", hint="pass a transformers config.json")
    if model_type == "whisper":
        return _whisper(text)
    if model_type == "wav2vec2":
        return _wav2vec2(text)
    return _decoder(text, model_type, config)


def _attn_shape(c: _Cfg) -> tuple[int, int, int, int]:
    alias = next((k for k in ("n_embed", "n_embd") if c.has(k)), None)
    hidden = c.int("hidden_size", c.raw(alias) if alias else ...)
    heads = c.int("num_attention_heads", c.raw("n_head", ...) if c.has("n_head") else ...)
    kv_heads = c.int("num_key_value_heads", heads)
    if not c.has("head_dim") and not c.has("kv_channels") and hidden % heads:
        # transformers refuses to build it; `hidden // heads` would quietly estimate another model
        raise UserError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                        field=f"{c.where}num_attention_heads", hint="pass the model's config.json as published on the Hub")
    head_dim = c.int("head_dim", c.raw("kv_channels", hidden // heads))
    return hidden, heads, kv_heads, head_dim


def _decoder(c: _Cfg, model_type: str, config: dict[str, object]) -> ArchDims:
    """Decoder-only language models (and the language half of Qwen2-VL / Qwen2.5-VL / Gemma 3)."""
    h, heads, kv, hd = _attn_shape(c)
    layers = c.int("num_hidden_layers", c.raw("n_layer", ...) if c.has("n_layer") else ...)
    vocab = c.int("vocab_size")
    tied = c.bool("tie_word_embeddings")
    q_out, kv_out = heads * hd, kv * hd
    lin: list[LinearLayer] = []
    norm: Literal["rms", "layer"] = "rms"
    norms, qk_norm, mlp = 2, False, "gated"
    per_layer_extra = 0  # norms and other non-linear per-layer params

    def add(name: str, i: int, o: int, bias: bool, count: int = layers) -> None:
        lin.append(LinearLayer(name, i, o, count, bias, "text"))

    family = fused_family(c, model_type, h, hd, q_out, kv_out, layers)
    if family is not None:  # phi, phi3, phi3small, qwen (v1), bloom, gpt2, gpt_neox
        lin.extend(family.linears)
        norm, norms, mlp, inter, per_layer_extra = family.norm, family.norms, family.mlp, family.inter, family.extra
    else:  # llama-style: llama, mistral, qwen2(_vl/_5_vl), qwen3(_moe), gemma*, and generic decoders
        qkv_bias = model_type in ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen2_moe") or c.bool("attention_bias", False)
        add("q_proj", h, q_out, qkv_bias)
        add("k_proj", h, kv_out, qkv_bias)
        add("v_proj", h, kv_out, qkv_bias)
        o_bias = c.bool("attention_bias", False) and not model_type.startswith("qwen2")
        add("o_proj", q_out, h, o_bias)
        qk_norm = model_type in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text")
        norms = 4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2
        per_layer_extra = norms * h + (2 * hd if qk_norm else 0)
    experts = c.int("num_experts", 0) if model_type in ("qwen2_moe", "qwen3_moe") else 0
    if model_type == "mixtral":  # every layer sparse; expert width is intermediate_size
        experts = c.int("num_local_experts", 8)
    top_k = moe_inter = shared_inter = moe_layers = 0
    if family is None:
        inter = c.int("intermediate_size")
        mlp_bias = c.bool("mlp_bias", False)
        if experts:
            top_k = c.int("num_experts_per_tok", 2)
            moe_inter = inter if model_type == "mixtral" else c.int("moe_intermediate_size")
            shared_inter = c.int("shared_expert_intermediate_size", 0)
            step = c.int("decoder_sparse_step", 1)
            dense_only = set(c.raw("mlp_only_layers", []) or [])  # type: ignore[arg-type]
            moe_layers = sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)
            dense_layers = layers - moe_layers
            # Experts are 3-D nn.Parameters in transformers 5 (not nn.Linear): all-linear skips them.
            if dense_layers:
                for name, i, o in (("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h)):
                    add(name, i, o, mlp_bias, dense_layers)
            if shared_inter:
                for name, i, o in (("gate_proj", h, shared_inter), ("up_proj", h, shared_inter)):
                    add(name, i, o, False, moe_layers)
                add("down_proj", shared_inter, h, False, moe_layers)
                add("shared_expert_gate", h, 1, False, moe_layers)
        else:
            add("gate_proj", h, inter, mlp_bias)
            add("up_proj", h, inter, mlp_bias)
            add("down_proj", inter, h, mlp_bias)
    text_linear = sum(x.params for x in lin)
    expert_params = moe_layers * (experts * 3 * h * moe_inter + experts * h)  # experts + router weight
    layer_params = text_linear + layers * per_layer_extra + expert_params
    final_norm = 2 * h if norm == "layer" else h
    embedding = vocab * h + (family.embedding_extra if family else 0)  # + learned positions / embedding norm
    lm_head = 0 if tied else vocab * h + (vocab if model_type == "phi" else 0)
    vision = vision_dims(config, model_type, h) if model_type in ("qwen2_vl", "qwen2_5_vl", "gemma3") else None
    window = c.raw("sliding_window", None) if c.bool("use_sliding_window", True) else None
    sliding = 0
    if window:
        if model_type == "gemma2":
            sliding = layers // 2
        elif model_type in ("gemma3", "gemma3_text"):
            pattern = c.int("sliding_window_pattern", 6)
            sliding = layers - layers // pattern
        elif model_type in ("mistral", "phi3"):
            sliding = layers
    return ArchDims(
        model_type=model_type, kind="decoder", hidden=h, layers=layers, heads=heads, kv_heads=kv, head_dim=hd,
        intermediate=inter, vocab=vocab, tied_embeddings=tied, mlp=mlp, norm=norm,  # type: ignore[arg-type]
        norms_per_layer=norms, qk_norm=qk_norm, cross_attention=False, num_experts=experts,
        experts_per_tok=top_k, moe_intermediate=moe_inter, shared_expert_intermediate=shared_inter,
        moe_layers=moe_layers, sliding_window=int(window) if sliding else None, sliding_layers=sliding,
        params=ParamCounts(
            embedding=embedding, layers=layer_params, final_norm=final_norm, lm_head=lm_head,
            vision=vision.params if vision else 0, audio=0,
        ),
        linears=tuple(lin) + (vision.linears if vision else ()),
        vision=vision,
        hidden_act=c.str("hidden_act", c.raw("hidden_activation", c.raw(
            "activation_function", _DEFAULT_ACT.get(model_type, "silu")))),
    )


def _whisper(c: _Cfg) -> ArchDims:
    """Whisper: the decoder is the text stack (self + cross attention); the encoder is `audio`."""
    d, layers, vocab = c.int("d_model"), c.int("decoder_layers"), c.int("vocab_size")
    heads, ffn = c.int("decoder_attention_heads"), c.int("decoder_ffn_dim")
    lin = [
        *(LinearLayer(n, d, d, 2 * layers, n != "k_proj", "text") for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
        LinearLayer("fc1", d, ffn, layers, True, "text"),
        LinearLayer("fc2", ffn, d, layers, True, "text"),
    ]
    per_layer_norms = 3 * 2 * d
    audio = audio_dims(c.data, "whisper")
    return ArchDims(
        model_type="whisper", kind="encoder-decoder", hidden=d, layers=layers, heads=heads, kv_heads=heads,
        head_dim=d // heads, intermediate=ffn, vocab=vocab, tied_embeddings=True, mlp="plain", norm="layer",
        norms_per_layer=3, qk_norm=False, cross_attention=True, num_experts=0, experts_per_tok=0,
        moe_intermediate=0, shared_expert_intermediate=0, moe_layers=0, sliding_window=None, sliding_layers=0,
        params=ParamCounts(
            embedding=vocab * d + c.int("max_target_positions", 448) * d,
            layers=sum(x.params for x in lin) + layers * per_layer_norms,
            final_norm=2 * d, lm_head=0, vision=0, audio=audio.params,
        ),
        linears=tuple(lin) + audio.linears,
        audio=audio,
        hidden_act=c.str("activation_function", "gelu"),
    )


def _wav2vec2(c: _Cfg) -> ArchDims:
    """wav2vec2 CTC: the transformer encoder is the stack; the conv feature extractor is `audio`."""
    h, heads, layers = c.int("hidden_size"), c.int("num_attention_heads"), c.int("num_hidden_layers")
    inter, vocab = c.int("intermediate_size"), c.int("vocab_size")
    lin = [
        *(LinearLayer(n, h, h, layers, True, "text") for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
        LinearLayer("intermediate_dense", h, inter, layers, True, "text"),
        LinearLayer("output_dense", inter, h, layers, True, "text"),
        LinearLayer("lm_head", h, vocab, 1, True, "text"),  # CTC head: get_output_embeddings() is None
    ]
    audio = audio_dims(c.data, "wav2vec2")
    masked = h if (c.raw("mask_time_prob", 0.05) or 0) > 0 or (c.raw("mask_feature_prob", 0.0) or 0) > 0 else 0
    return ArchDims(
        model_type="wav2vec2", kind="encoder", hidden=h, layers=layers, heads=heads, kv_heads=heads,
        head_dim=h // heads, intermediate=inter, vocab=vocab, tied_embeddings=False, mlp="plain", norm="layer",
        norms_per_layer=2, qk_norm=False, cross_attention=False, num_experts=0, experts_per_tok=0,
        moe_intermediate=0, shared_expert_intermediate=0, moe_layers=0, sliding_window=None, sliding_layers=0,
        params=ParamCounts(
            embedding=0, layers=sum(x.params for x in lin[:-1]) + layers * 4 * h, final_norm=2 * h,
            lm_head=lin[-1].params, vision=0, audio=audio.params, other=masked,
        ),
        linears=tuple(lin) + audio.linears,
        audio=audio,
        hidden_act=c.str("hidden_act", "gelu"),
    )
