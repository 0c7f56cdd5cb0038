"""What a sample becomes inside the model, for the analytic estimate: image tokens, audio frames, and
the words that describe the architecture in every estimate's assumptions.

- VLM: an image of W x H pixels is resized by the model's processor (Qwen2-VL / Qwen2.5-VL: smart_resize
  to multiples of 28 within min_pixels..max_pixels; Gemma 3: always 896 x 896, pan-and-scan off), cut
  into 14 px patches (the vision tower's positions), and merged 2 x 2 (Qwen) or pooled to 256 (Gemma 3)
  into the tokens the language model sees (catalog/towers.py `VisionDims.image`).
- ASR: Whisper's feature extractor pads or truncates every clip to 30 s (3000 log-mel frames), so the
  encoder always sees 1500 positions and the decoder at most max_target_positions (448) tokens;
  wav2vec2's convolutions turn 16 kHz audio into ~50 frames a second, so its cost grows with the clip.
Pure and torch-free.
"""

from __future__ import annotations

from automodel.catalog.architecture import ArchDims
from automodel.catalog.memory.plan import Plan, format_image_size
from automodel.catalog.towers import ImageGrid, VisionDims

FP32 = 4
WHISPER_MAX_TARGET_POSITIONS = 448


def image_grid(d: ArchDims, plan: Plan) -> ImageGrid | None:
    """One of the plan's images as the model's processor and vision tower see it (None: no tower)."""
    if d.vision is None:
        return None
    return d.vision.image(plan.image_size, min_pixels=plan.min_pixels, max_pixels=plan.max_pixels)


def whisper_decoder_limit(config: dict[str, object]) -> int:
    """Whisper's decoder has learned positions up to max_target_positions (448): labels never exceed it."""
    limit = config.get("max_target_positions", WHISPER_MAX_TARGET_POSITIONS)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else WHISPER_MAX_TARGET_POSITIONS


def positions(d: ArchDims, plan: Plan, config: dict[str, object]) -> tuple[int, int, int]:
    """(language-model positions, vision patches, Whisper encoder frames) per sequence."""
    seq = plan.seq_len
    patches = frames = 0
    grid = image_grid(d, plan)
    if grid is not None and plan.images:
        seq += plan.images * grid.tokens
        patches = plan.images * grid.patches
    if d.model_type == "wav2vec2" and d.audio is not None:
        seq = d.audio.frames(plan.audio_seconds)  # the encoder's positions are audio frames
    if d.model_type == "whisper" and d.audio is not None:
        frames = d.audio.frames(plan.audio_seconds)
        seq = min(seq, whisper_decoder_limit(config))
    return seq, patches, frames


def pixel_bytes(v: VisionDims) -> int:
    """pixel_values per patch as the processor returns them (fp32): channels x temporal x patch^2 values
    (Qwen: 3 x 2 x 14 x 14 = 1176 per row of its flattened patches; Gemma 3: 3 x 14 x 14 of the image)."""
    return FP32 * v.patch_values


def vit_forward_bytes(v: VisionDims, c: int) -> float:
    """Largest working set per patch inside one vision block's forward, beyond what the tower saves: the
    residual and normalised input plus attention's q/k/v and output or the MLP's live intermediates,
    whichever is larger (with SDPA no patch x patch scores)."""
    return 2 * c * v.width + max(c * 4 * v.width, c * v.mlp_dim * (3 if v.mlp_gated else 2))


def stack_words(d: ArchDims) -> str:
    """The architecture the activation count was recounted for, from the model's own dimensions."""
    if d.mlp == "gated":
        act = "SwiGLU" if d.hidden_act == "silu" else "GeGLU"
        mlp = f"{act} MLP"
    else:
        mlp = f"{'GELU' if 'gelu' in d.hidden_act else d.hidden_act} MLP (fc1/fc2)"
    norm = "RMSNorm (fp32 upcasts)" if d.norm == "rms" else "LayerNorm"
    if d.kv_heads == d.heads:
        attn = f"multi-head attention ({d.heads} heads)"
    else:
        attn = f"GQA ({d.heads} query / {d.kv_heads} key-value heads)"
    if d.model_type == "whisper":
        return (f"Whisper encoder-decoder: {mlp}, {norm}, {attn}, SDPA; decoder self- and cross-attention "
                "over the encoder's 1500 frames")
    if d.model_type == "wav2vec2":
        return (f"wav2vec2: a convolutional feature encoder, then a transformer encoder with {mlp}, {norm}, "
                f"{attn}, SDPA; a CTC head over every frame")
    return f"{mlp}, {norm}, {attn}, SDPA"


def lora_scope(d: ArchDims) -> str:
    """Which linears LoRA adapts in this model, in words."""
    if d.model_type == "whisper":
        return "Whisper's encoder and decoder linears (the tied output head never)"
    if d.model_type == "wav2vec2":
        return "the transformer encoder's linears (the convolutional feature encoder never)"
    return "the language model's linears, never the output head" + (" or the vision tower" if d.vision else "")


def ctc_words(d: ArchDims) -> str:
    """The logits line for a CTC model (wav2vec2)."""
    return (f"Logits: the CTC head's {d.vocab} characters at every audio frame, fp32 log-softmax for the CTC "
            "loss and its gradients (12 B per frame per character); every frame counts.")


def input_lines(d: ArchDims, plan: Plan, config: dict[str, object]) -> list[str]:
    """Assumption lines saying what an image or a clip becomes in this model."""
    out: list[str] = []
    grid = image_grid(d, plan)
    if d.vision is not None and grid is not None:
        v = d.vision
        size = format_image_size(plan.image_size)
        if v.fixed_image_size:
            how = (f"the processor resizes every image to {grid.width}x{grid.height} (pan-and-scan off): "
                   f"{grid.patches} patches, pooled to {grid.tokens} tokens")
        else:
            lo = plan.min_pixels if plan.min_pixels is not None else v.min_pixels
            hi = plan.max_pixels if plan.max_pixels is not None else v.max_pixels
            how = (f"smart_resize to {grid.width}x{grid.height} (multiples of {v.patch_size * v.spatial_merge}, "
                   f"{lo:,}..{hi:,} pixels): {grid.patches} patches of {v.patch_size} px in the vision tower, "
                   f"merged {v.spatial_merge}x{v.spatial_merge} into {grid.tokens} tokens")
        trains = "every vision block saves its activations" if plan.method == "full" else (
            "the frozen tower saves no activations (its forward working set and the fp32 pixel_values count)")
        out.append(f"Vision: {plan.images} image(s) of {size} per sequence; {how} each, so "
                   f"{grid.tokens * plan.images} image tokens join the {plan.seq_len} text tokens; {trains}.")
    if d.audio is not None and d.model_type == "whisper":
        out.append(f"Audio: {plan.audio_seconds:g} s per clip, padded or truncated to Whisper's 30 s window: "
                   f"{d.audio.frames(plan.audio_seconds)} encoder frames whatever the clip length; decoder "
                   f"labels at most {whisper_decoder_limit(config)} tokens (max_target_positions).")
    elif d.audio is not None:
        out.append(f"Audio: {plan.audio_seconds:g} s per clip at 16 kHz -> {d.audio.frames(plan.audio_seconds)} "
                   "frames after the feature encoder's convolutions (~50 per second): the cost grows with the clip.")
    return out
