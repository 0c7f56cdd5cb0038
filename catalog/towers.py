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
# Qwen2-VL / Qwen2.5-VL preprocessor_config.json as published (Qwen/Qwen2-VL-7B-Instruct,
# Qwen/Qwen2.5-VL-{3,7,72}B-Instruct): min_pixels 56 x 56, max_pixels 16384 x 28 x 28.
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12_845_056
WHISPER_FRAMES_PER_WINDOW = 1500  # 30 s of log-mel at 100 Hz, halved by conv2 (stride 2)
WAV2VEC2_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class ImageGrid:
    """One image as the vision tower sees it: the processor's resized width and height in pixels, the
    tower's patches (its positions, before any merge) and the tokens it adds to the language model."""

    width: int
    height: int
    patches: int
    tokens: int


def smart_resize(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule (transformers `qwen2_vl.image_processing_qwen2_vl.smart_resize`), as
    (width, height): each side rounded to a multiple of `factor` (patch x merge = 28), then scaled down
    (floor) into max_pixels or up (ceil) into min_pixels, keeping the aspect ratio."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


@dataclass(frozen=True)
class VisionDims:
    """A ViT beside the language model. `fixed_image_size`/`tokens_per_image` are set for towers that
    resize every image to one resolution (Gemma 3's SigLIP: 896 px -> 4096 patches -> 256 tokens);
    `min_pixels`/`max_pixels` are the processor's bounds for towers that keep the aspect ratio (Qwen)."""

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
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS
    patch_values: int = 0  # pixel values per patch the processor returns (channels x temporal x patch^2)

    def image(self, size: tuple[int, int], *, min_pixels: int | None = None,
              max_pixels: int | None = None) -> ImageGrid:
        """How an image of `size` (width, height) reaches the model. Qwen: smart_resize within the pixel
        bounds (the plan's, else the processor's), patches of 14 px (the temporal patch of 2 repeats a
        still image, so one grid step in time), tokens = patches / merge^2. Gemma 3: every image is
        resized to the tower's square (pan-and-scan off, the processor's default), a fixed token count."""
        if self.fixed_image_size:
            side = self.fixed_image_size
            return ImageGrid(side, side, (side // self.patch_size) ** 2, self.tokens_per_image or 0)
        lo = min_pixels if min_pixels is not None else self.min_pixels
        hi = max_pixels if max_pixels is not None else self.max_pixels
        w, h = smart_resize(size[0], size[1], self.patch_size * self.spatial_merge, lo, max(lo, hi))
        patches = (w // self.patch_size) * (h // self.patch_size)
        return ImageGrid(w, h, patches, patches // self.spatial_merge**2)


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
    frozen_params: int = 0  # parameters the model itself never trains (Whisper's sinusoidal encoder positions)
    mels: int = 0  # Whisper: log-mel bins per input frame

    def input_bytes(self, seconds: float) -> int:
        """The fp32 input of one sample as the feature extractor returns it: Whisper's (mels, 3000) log-mel
        features whatever the clip; wav2vec2's raw 16 kHz samples."""
        if self.kind == "whisper":
            return 4 * self.mels * 2 * WHISPER_FRAMES_PER_WINDOW
        return 4 * int(seconds * WAV2VEC2_SAMPLE_RATE)

    def frames(self, seconds: float) -> int:
        """Encoder positions per sample. Whisper: 1500 whatever the clip (its feature extractor pads or
        truncates to 30 s = 3000 log-mel frames, conv2's stride 2 halves them, and the encoder refuses any
        other length); wav2vec2: the conv stack's output, ~49.9 per second of 16 kHz audio."""
        if self.kind == "whisper":
            return WHISPER_FRAMES_PER_WINDOW
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
                          size, tokens, params, lin, patch_values=channels * patch * patch)
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
                      patch, merge, None, None, params, lin, patch_values=channels * temporal * patch * patch)


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
        # The encoder's sinusoidal positions are a parameter transformers freezes (requires_grad False).
        return AudioDims("whisper", layers, d, _get(data, {}, "encoder_attention_heads", where), ffn,
                         (d, d), (3, 3), (1, 2), params, lin, frozen_params=positions * d, mels=mels)
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
