"""Vision towers and audio encoders beside a language stack: their shapes, parameter counts, linears,
and how many positions an input becomes (image -> patches -> LM tokens; audio seconds -> frames).

Split from catalog/architecture.py (which owns `ArchDims`); pure and torch-free. Defaults are
transformers' config defaults for keys the published configs omit (Qwen2VLVisionConfig,
Qwen2_5_VLVisionConfig, SiglipVisionConfig as Gemma3Config fills it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from automodel.catalog.errors import UserError

if TYPE_CHECKING:
    from automodel.catalog.architecture import LinearLayer

_QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16,
                    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
_QWEN2_5_VL_VISION = {"depth": 32, "hidden_size": 3584, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "in_channels": 3}
_GEMMA3_SIGLIP = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                  "num_attention_heads": 16, "image_size": 896, "patch_size": 14, "num_channels": 3}
WHISPER_FRAMES_PER_WINDOW = 1500  # 30 s of log-mel at 100 Hz, halved by conv2 (stride 2)
WHISPER_WINDOW_SECONDS = 30.0
WAV2VEC2_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class VisionDims:
    """A ViT beside the language model. `fixed_image_size`/`tokens_per_image` are set for towers that
    resize every image to one resolution (Gemma 3's SigLIP: 896 px -> 4096 patches -> 256 tokens)."""

    kind: Literal["qwen2_vl", "qwen2_5_vl", "siglip"]
    depth: int
    width: int
    heads: int
    mlp_dim: int
    mlp_gated: bool
    patch_size: int
    spatial_merge: int
    fixed_image_size: int | None
    tokens_per_image: int | None
    params: int
    linears: tuple[LinearLayer, ...]

    def side(self, image_size: int) -> int:
        """Pixels per side after the processor: fixed, or rounded to a multiple of patch x merge."""
        if self.fixed_image_size:
            return self.fixed_image_size
        unit = self.patch_size * self.spatial_merge
        return max(unit, round(image_size / unit) * unit)

    def patches(self, image_size: int) -> int:
        """ViT positions per (square) image."""
        return (self.side(image_size) // self.patch_size) ** 2

    def lm_tokens(self, image_size: int) -> int:
        """Tokens one image adds to the language model's sequence."""
        if self.tokens_per_image:
            return self.tokens_per_image
        return self.patches(image_size) // (self.spatial_merge**2)


@dataclass(frozen=True)
class AudioDims:
    """An audio encoder: Whisper's transformer encoder, or wav2vec2's convolutional feature extractor."""

    kind: Literal["whisper", "wav2vec2"]
    layers: int  # transformer layers inside `params` (Whisper encoder); 0 for wav2vec2's extractor
    width: int
    heads: int
    ffn: int
    conv_channels: tuple[int, ...]
    conv_kernels: tuple[int, ...]
    conv_strides: tuple[int, ...]
    params: int
    linears: tuple[LinearLayer, ...]

    def frames(self, seconds: float) -> int:
        """Encoder positions per sample: Whisper pads every 30 s window to 1500; wav2vec2 ~49.9 per s."""
        if self.kind == "whisper":
            return WHISPER_FRAMES_PER_WINDOW * max(1, math.ceil(seconds / WHISPER_WINDOW_SECONDS))
        return self.conv_lengths(seconds)[-1]

    def conv_lengths(self, seconds: float) -> tuple[int, ...]:
        """Output length of each conv layer (wav2vec2): L -> (L - kernel) // stride + 1."""
        length, out = int(seconds * WAV2VEC2_SAMPLE_RATE), []
        for k, s in zip(self.conv_kernels, self.conv_strides, strict=True):
            length = (length - k) // s + 1
            out.append(max(length, 0))
        return tuple(out)


def _get(data: dict[str, object], defaults: dict[str, object], key: str, where: str) -> int:
    value = data.get(key, defaults.get(key))
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UserError(f"missing or non-numeric `{key}`", field=f"{where}{key}", hint="pass the full config.json")
    return int(value)


def vision_dims(config: dict[str, object], model_type: str, text_hidden: int) -> VisionDims:
    from automodel.catalog.architecture import LinearLayer

    raw = config.get("vision_config") or {}
    if not isinstance(raw, dict):
        raise UserError("vision_config must be a mapping", field="config.vision_config")
    data = {k: v for k, v in raw.items() if v is not None}
    where = "config.vision_config."
    if model_type == "gemma3":
        d = _GEMMA3_SIGLIP
        w, m = _get(data, d, "hidden_size", where), _get(data, d, "intermediate_size", where)
        depth = _get(data, d, "num_hidden_layers", where)
        size, patch = _get(data, d, "image_size", where), _get(data, d, "patch_size", where)
        positions = (size // patch) ** 2
        lin = (
            *(LinearLayer(n, w, w, depth, True, "vision") for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
            LinearLayer("fc1", w, m, depth, True, "vision"),
            LinearLayer("fc2", m, w, depth, True, "vision"),
        )
        channels = _get(data, d, "num_channels", where)
        # SigLIP: conv patch embed (bias) + learned positions + 2 LayerNorms/block + post LayerNorm;
        # Gemma 3 projector: mm_input_projection_weight [w x text_hidden] + mm_soft_emb_norm [w] (no Linear).
        params = (sum(x.params for x in lin) + depth * 4 * w + channels * patch * patch * w + w
                  + positions * w + 2 * w + w * text_hidden + w)
        if data.get("vision_use_head", False):
            params += 4 * (w * w + w) + 2 * w + w * m + m + m * w + w + w  # attention-pool head
        tokens = int(config.get("mm_tokens_per_image", 256) or 256)  # type: ignore[call-overload]
        return VisionDims("siglip", depth, w, _get(data, d, "num_attention_heads", where), m, False, patch, 1,
                          size, tokens, params, lin)
    if model_type == "qwen2_vl":
        d = _QWEN2_VL_VISION
        w, depth = _get(data, d, "embed_dim", where), _get(data, d, "depth", where)
        m, out = w * _get(data, d, "mlp_ratio", where), _get(data, d, "hidden_size", where)
        gated, norm_params = False, 4 * w  # LayerNorm x2 with bias
        block = [LinearLayer("fc1", w, m, depth, True, "vision"), LinearLayer("fc2", m, w, depth, True, "vision")]
        merger_norm = 2 * w
    else:
        d = _QWEN2_5_VL_VISION
        w, depth = _get(data, d, "hidden_size", where), _get(data, d, "depth", where)
        m, out = _get(data, d, "intermediate_size", where), _get(data, d, "out_hidden_size", where)
        gated, norm_params = True, 2 * w  # RMSNorm x2
        block = [LinearLayer("gate_proj", w, m, depth, True, "vision"), LinearLayer("up_proj", w, m, depth, True, "vision"),
                 LinearLayer("down_proj", m, w, depth, True, "vision")]
        merger_norm = w
    patch, merge = _get(data, d, "patch_size", where), _get(data, d, "spatial_merge_size", where)
    temporal, channels = _get(data, d, "temporal_patch_size", where), _get(data, d, "in_channels", where)
    merged = w * merge * merge
    lin = (
        LinearLayer("qkv", w, 3 * w, depth, True, "vision"),
        LinearLayer("proj", w, w, depth, True, "vision"),
        *block,
        LinearLayer("0", merged, merged, 1, True, "vision"),  # merger.mlp.0
        LinearLayer("2", merged, out, 1, True, "vision"),  # merger.mlp.2
    )
    params = sum(x.params for x in lin) + depth * norm_params + channels * temporal * patch * patch * w + merger_norm
    return VisionDims(model_type, depth, w, _get(data, d, "num_heads", where), m, gated,  # type: ignore[arg-type]
                      patch, merge, None, None, params, lin)


def audio_dims(data: dict[str, object], kind: Literal["whisper", "wav2vec2"]) -> AudioDims:
    from automodel.catalog.architecture import LinearLayer

    where = "config."
    if kind == "whisper":
        d, layers = _get(data, {}, "d_model", where), _get(data, {}, "encoder_layers", where)
        ffn = _get(data, {}, "encoder_ffn_dim", where)
        mels = _get(data, {"num_mel_bins": 80}, "num_mel_bins", where)
        lin = (
            *(LinearLayer(n, d, d, layers, n != "k_proj", "audio") for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
            LinearLayer("fc1", d, ffn, layers, True, "audio"),
            LinearLayer("fc2", ffn, d, layers, True, "audio"),
        )
        positions = _get(data, {"max_source_positions": 1500}, "max_source_positions", where)
        params = (sum(x.params for x in lin) + layers * 4 * d + mels * d * 3 + d + d * d * 3 + d
                  + positions * d + 2 * d)
        return AudioDims("whisper", layers, d, _get(data, {}, "encoder_attention_heads", where), ffn,
                         (d, d), (3, 3), (1, 2), params, lin)
    dims = tuple(int(x) for x in data.get("conv_dim", ()))  # type: ignore[union-attr]
    kernels = tuple(int(x) for x in data.get("conv_kernel", ()))  # type: ignore[union-attr]
    strides = tuple(int(x) for x in data.get("conv_stride", ()))  # type: ignore[union-attr]
    if not dims or len(dims) != len(kernels) or len(dims) != len(strides):
        raise UserError("conv_dim, conv_kernel and conv_stride must be lists of equal length", field="config.conv_dim")
    h = _get(data, {}, "hidden_size", where)
    bias = bool(data.get("conv_bias", False))
    norm = str(data.get("feat_extract_norm", "group"))
    params, prev = 0, 1
    for i, (c, k) in enumerate(zip(dims, kernels, strict=True)):
        params += prev * c * k + (c if bias else 0)
        if norm == "layer" or i == 0:
            params += 2 * c  # LayerNorm per conv (feat_extract_norm=layer) or GroupNorm on the first
        prev = c
    groups = _get(data, {"num_conv_pos_embedding_groups": 16}, "num_conv_pos_embedding_groups", where)
    pos_k = _get(data, {"num_conv_pos_embeddings": 128}, "num_conv_pos_embeddings", where)
    projection = LinearLayer("projection", dims[-1], h, 1, True, "audio")
    # feature projection LayerNorm + Linear; positional conv under weight_norm(dim=2): v, g (k), bias.
    params += 2 * dims[-1] + projection.params + h * (h // groups) * pos_k + pos_k + h
    return AudioDims("wav2vec2", 0, h, 0, 0, dims, kernels, strides, params, (projection,))
