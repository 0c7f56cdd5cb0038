"""Exact parameter counts from an architecture config, and the config/model-class helpers behind them.

The count is what transformers would allocate: the model class is built on `torch.device("meta")` (no
memory, no weights downloaded) and every unique tensor is counted once, so tied input/output embeddings
count once. This module imports torch and transformers at top level; import it lazily (the catalog and
advisor commands stay torch-free). The simulator and the trainer use `hf_config_from_dict` and
`model_class_for` too, so a config becomes the same model everywhere.

Remote-code architectures are never executed. Phi-3-small (`phi3small`) is counted analytically from its
config (`phi3small_param_count`, labelled `analytic` in the catalog); any other type transformers does not
ship is refused with a UserError that says it needs trust_remote_code.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForCTC,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    PretrainedConfig,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from automodel.catalog.errors import UserError

ANALYTIC_TYPES = frozenset({"phi3small"})

# Model types whose checkpoint is an image-text model even though a causal-LM class also exists for them.
_IMAGE_TEXT_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl", "gemma3", "qwen3_vl", "llava", "mllama", "idefics3"})


def _model_type(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UserError(
            "the config has no `model_type`", field="config.json", hint="pass a transformers config.json"
        )
    return model_type


def _require_known(model_type: str) -> None:
    if model_type not in CONFIG_MAPPING:
        raise UserError(
            f"model_type {model_type!r} is not built into transformers; it needs trust_remote_code, which "
            "automodel never runs",
            field="config.json",
            hint="pick a model whose architecture transformers ships (see `automodel catalog list`)",
        )


def hf_config_from_dict(config: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from a config.json dict: `AutoConfig.for_model(model_type, **rest)`.

    Nested sub-configs (text_config, vision_config) stay dicts so their own defaults apply.
    """
    model_type = _model_type(config)
    _require_known(model_type)
    rest = {k: copy.deepcopy(v) for k, v in config.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **rest)
    except (TypeError, ValueError, ArithmeticError, StrictDataclassError) as exc:
        # transformers 5 validates config fields (strict dataclasses) and derives head_dim in __post_init__:
        # a wrong type or a zero is the user's file, not a crash.
        problem = " ".join(str(exc).split())  # pydantic-style multi-line messages on one line
        raise UserError(f"transformers rejects this {model_type} config: {problem}", field="config.json",
                        hint="pass the model's config.json as published on the Hub") from None


def _preferred_class(model_type: str, arch: str, has_vision: bool) -> type:
    if arch.endswith("ForCTC") or (model_type in {"wav2vec2", "hubert", "wavlm"} and not arch):
        return AutoModelForCTC
    if arch.endswith("ForSpeechSeq2Seq") or model_type in {"whisper", "speech_to_text"}:
        return AutoModelForSpeechSeq2Seq
    if model_type in _IMAGE_TEXT_TYPES or arch.endswith("ForImageTextToText"):
        return AutoModelForImageTextToText
    if arch.endswith("ForConditionalGeneration") and has_vision:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def model_class_for(config: dict[str, Any] | PretrainedConfig) -> type:
    """The AutoModel class a checkpoint of this config is trained with: causal LM, image-text-to-text,
    speech seq2seq or CTC, chosen by `architectures` first and `model_type` second. A config that class
    cannot build (T5, BERT …) falls back to seq2seq-LM, then the bare AutoModel, so any architecture
    transformers ships can still be counted."""
    if isinstance(config, PretrainedConfig):
        model_type, architectures = config.model_type, list(config.architectures or [])
        has_vision = getattr(config, "vision_config", None) is not None
    else:
        model_type, architectures = _model_type(config), list(config.get("architectures") or [])
        has_vision = "vision_config" in config
    _require_known(model_type)
    preferred = _preferred_class(model_type, architectures[0] if architectures else "", has_vision)
    config_class = CONFIG_MAPPING[model_type]
    for cls in (preferred, AutoModelForSeq2SeqLM, AutoModel):
        if config_class in cls._model_mapping:  # the auto class's own {config class: model class} table
            return cls
    raise UserError(
        f"transformers has no model class for model_type {model_type!r}",
        field="config.json",
        hint="pass the config of a model transformers can build",
    )


def build_meta_model(config: dict[str, Any]) -> torch.nn.Module:
    """The full transformers model for `config`, on the meta device (shapes only, no memory)."""
    hf_config = hf_config_from_dict(config)
    cls = model_class_for(config)
    # Building under the meta device context (rather than accelerate's init_empty_weights) keeps
    # transformers' own weight tying, so tied embeddings are one tensor.
    with torch.device("meta"):
        return cls.from_config(hf_config)


def count_unique_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once per tensor (tied weights share one Parameter object)."""
    seen: set[int] = set()
    total = 0
    for _, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def exact_param_count(config: dict[str, Any]) -> int:
    """Exact parameter count of the model `config` describes (see the module docstring)."""
    if params_method_for(config) == "analytic":
        return phi3small_param_count(config)  # ANALYTIC_TYPES holds only phi3small
    return count_unique_parameters(build_meta_model(config))


def params_method_for(config: dict[str, Any]) -> str:
    """'analytic' for the architectures counted by formula, 'meta-build' otherwise."""
    return "analytic" if _model_type(config) in ANALYTIC_TYPES else "meta-build"


def phi3small_param_count(config: dict[str, Any]) -> int:
    """Phi-3-small, counted from its config without running its remote code.

    Module shapes follow microsoft/Phi-3-small-8k-instruct's modeling_phi3_small.py: token embedding tied
    to lm_head (`_tied_weights_keys = ["lm_head.weight"]`, tie_word_embeddings defaults to True); per
    layer two LayerNorms with bias, a fused `query_key_value` Linear with bias of width
    (heads + 2 * kv_heads) * head_dim, a `dense` output Linear with bias, a GeGELU MLP with
    `up_proj` hidden -> 2 * ff and `down_proj` ff -> hidden, both with bias; a final LayerNorm.
    Block-sparse attention adds no parameters.
    """
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    vocab = int(config["vocab_size"])
    ff = int(config["ff_intermediate_size"])
    if config.get("gegelu_pad_to_256", False):
        ff = (ff + 255) // 256 * 256
    head_dim = hidden // heads
    qkv_out = (heads + 2 * kv_heads) * head_dim
    per_layer = (
        2 * (2 * hidden)  # input + post-attention LayerNorm (weight, bias)
        + hidden * qkv_out
        + qkv_out  # query_key_value
        + hidden * hidden
        + hidden  # dense
        + hidden * 2 * ff
        + 2 * ff  # up_proj (gated half and linear half)
        + ff * hidden
        + hidden  # down_proj
    )
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * per_layer + 2 * hidden  # + final LayerNorm
