"""The batches the simulator feeds the engine's model, per task, and the loss it takes over them.

What each task's collator hands the model, at the plan's shapes (the values do not matter to memory):
- llm: `input_ids` of seq_len tokens, labels equal to them (every position a target);
- vlm, Qwen2-VL / Qwen2.5-VL: per image `<|vision_start|>`, its image tokens, `<|vision_end|>` among the
  text (seq_len text positions + images x tokens in all), `pixel_values` of (patches, 3 x 2 x 14 x 14)
  fp32, `image_grid_thw`, `mm_token_type_ids`, and the M-RoPE `position_ids` the model would compute
  from them (computed on real tensors: they only depend on the token layout); image tokens are never
  targets. The image's patch grid is the catalog's (`VisionDims.image`: smart_resize with the plan's pixel
  bounds), so the analytic and simulated engines count the same tokens;
- vlm, Gemma 3: `<start_of_image>`, mm_tokens_per_image (256) image tokens, `<end_of_image>` per image,
  `pixel_values` of (images, 3, 896, 896) fp32 and `token_type_ids` (the bidirectional image mask);
- asr, Whisper: `input_features` of (num_mel_bins, 3000) fp32 (30 s, what the feature extractor pads or
  truncates every clip to) and min(seq_len, max_target_positions) decoder tokens as labels;
- asr, wav2vec2 CTC: `input_values` of audio_seconds x 16 kHz fp32 and CHARS_PER_SECOND characters of
  transcript per second as CTC targets.
Loss: the engine's summed fp32 cross-entropy (trainer/loss.py causal_lm_loss) for decoder LMs and VLMs,
or for CTC fp32 log-softmax + `F.ctc_loss` as Wav2Vec2ForCTC computes it (lengths given as Python ints).

`fake_friendly()` lets transformers' multimodal code run on fake tensors: small index tensors built with
`torch.tensor` stay constant-propagated (so `.tolist()` on image grids and cumulative lengths works),
transformers' data-dependent sanity checks are off, CTC gets the fake kernel torch lacks, and Qwen2.5-VL's
window index is computed on real tensors.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from automodel.catalog.memory.plan import Plan
from automodel.trainer import modeling

WAV2VEC2_SAMPLE_RATE = 16_000
WHISPER_MEL_FRAMES = 3000  # 30 s of log-mel at 100 frames per second
CHARS_PER_SECOND = 16  # read speech: LibriSpeech averages ~15 characters per second
CONSTANT_NUMEL = 1 << 22  # index tensors up to this size stay constant under fake tensors
SPEECH = ("whisper", "wav2vec2")


@dataclass
class Batch:
    """One micro batch: the model's keyword inputs, the labels, and how the loss is taken."""

    inputs: dict[str, Any]
    labels: torch.Tensor
    loss: str  # "causal" (decoder LM, VLM), "seq2seq" (Whisper), "ctc" (wav2vec2)
    logits_rows: int  # positions whose logits the head computes (to tell logits apart in the tracker)
    extra: dict[str, Any] = field(default_factory=dict)


def model_type(config: dict[str, Any]) -> str:
    return str(config.get("model_type", ""))


def make_batch(model: torch.nn.Module, config: dict[str, Any], plan: Plan) -> Batch:
    """The plan's micro batch for this model (see the module docstring)."""
    kind = model_type(config)
    b = plan.micro_batch
    if kind == "whisper":
        hf = modeling.base_model(model).config
        tokens = min(plan.seq_len, int(getattr(hf, "max_target_positions", 448)))
        labels = torch.tensor([[1] * tokens] * b)
        feats = torch.zeros(b, hf.num_mel_bins, WHISPER_MEL_FRAMES)
        return Batch({"input_features": feats, "decoder_input_ids": labels}, labels, "seq2seq", b * tokens)
    if kind == "wav2vec2":
        samples = int(plan.audio_seconds * WAV2VEC2_SAMPLE_RATE)
        chars = max(1, math.ceil(plan.audio_seconds * CHARS_PER_SECOND))
        labels = torch.tensor([[1] * chars] * b)
        frames = _audio_frames(config, plan)
        return Batch({"input_values": torch.zeros(b, samples)}, labels, "ctc", b * frames, {"chars": chars})
    if plan.images and kind in ("qwen2_vl", "qwen2_5_vl"):
        return _qwen_batch(model, config, plan)
    if plan.images and kind == "gemma3":
        return _gemma3_batch(model, plan)
    length = plan.seq_len + plan.new_tokens if plan.mode == "inference" else plan.seq_len
    return _causal({"input_ids": torch.zeros(b, length, dtype=torch.long)}, [[0] * length] * b)


def _causal(inputs: dict[str, Any], label_rows: list[list[int]]) -> Batch:
    """A decoder-LM batch with the targets the collator would add (trainer/loss.py target_positions),
    found on real tensors: reading labels is what fake tensors cannot do."""
    from automodel.trainer.loss import target_positions

    with _real_tensors():
        targets = target_positions(torch.tensor(label_rows))
    labels = torch.tensor(label_rows)
    # cloned in the caller's mode: fake tensors under the simulator, as the model's inputs are
    return Batch(inputs, labels, "causal", labels.numel(), {"targets": {k: v.clone() for k, v in targets.items()}})


def _audio_frames(config: dict[str, Any], plan: Plan) -> int:
    from automodel.catalog.architecture import dims_from_config

    audio = dims_from_config(config).audio
    return audio.frames(plan.audio_seconds) if audio is not None else 0


def describe(config: dict[str, Any], plan: Plan) -> list[str]:
    """Assumption lines saying what the simulated micro batch held."""
    from automodel.catalog.architecture import dims_from_config
    from automodel.catalog.memory.plan import format_image_size

    kind = model_type(config)
    if kind == "whisper":
        return [f"Whisper: {WHISPER_MEL_FRAMES} log-mel frames (30 s; every clip is padded or truncated to it) "
                f"through the encoder (1500 positions), {min(plan.seq_len, 448)} decoder label tokens"]
    if kind == "wav2vec2":
        return [f"wav2vec2: {plan.audio_seconds:g} s of 16 kHz audio ({_audio_frames(config, plan)} frames), "
                f"{CHARS_PER_SECOND} transcript characters per second as CTC targets; LayerDrop off "
                "(every layer runs, its worst case)"]
    vision = dims_from_config(config).vision
    if vision is None:
        return []
    if not plan.images:
        return ["multimodal model, text-only step (--images 0): the vision tower's weights count, it does not run"]
    grid = vision.image(plan.image_size, min_pixels=plan.min_pixels, max_pixels=plan.max_pixels)
    return [f"{plan.images} image(s) of {format_image_size(plan.image_size)} per sequence through the vision "
            f"tower ({grid.patches} patches, {grid.tokens} tokens each, fp32 pixel_values); image tokens are "
            "not targets"]


def _rows(plan: Plan, start: int, image: int, end: int, tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows with each image's start, image tokens and end among the text (seq_len text positions,
    the markers taken from them), and the matching 0/1 image-token types."""
    per_image = [start] + [image] * tokens + [end]
    text = max(0, plan.seq_len - 2 * plan.images)
    row = per_image * plan.images + [0] * text
    types = ([0] + [1] * tokens + [0]) * plan.images + [0] * text
    return [row] * plan.micro_batch, [types] * plan.micro_batch


def _qwen_batch(model: torch.nn.Module, config: dict[str, Any], plan: Plan) -> Batch:
    from automodel.catalog.architecture import dims_from_config

    hf = modeling.base_model(model).config
    v = hf.vision_config
    grid = dims_from_config(config).vision.image(plan.image_size, min_pixels=plan.min_pixels,  # type: ignore[union-attr]
                                                 max_pixels=plan.max_pixels)
    gh, gw = grid.height // v.patch_size, grid.width // v.patch_size
    rows, types = _rows(plan, hf.vision_start_token_id, hf.image_token_id, hf.vision_end_token_id, grid.tokens)
    n = plan.micro_batch * plan.images
    inputs: dict[str, Any] = {
        "input_ids": torch.tensor(rows),
        "pixel_values": torch.zeros(n * gh * gw, v.in_channels * v.temporal_patch_size * v.patch_size**2),
        "image_grid_thw": torch.tensor([[1, gh, gw]] * n),
        "mm_token_type_ids": torch.tensor(types),
    }
    with _real_tensors():
        position_ids, _ = modeling.base_model(model).model.get_rope_index(
            torch.tensor(rows), image_grid_thw=torch.tensor([[1, gh, gw]] * n),
            mm_token_type_ids=torch.tensor(types),
        )
    inputs["position_ids"] = position_ids
    return _causal(inputs, [[-100 if t else 0 for t in row] for row in types])


def _gemma3_batch(model: torch.nn.Module, plan: Plan) -> Batch:
    hf = modeling.base_model(model).config
    side = hf.vision_config.image_size
    rows, types = _rows(plan, hf.boi_token_index, hf.image_token_index, hf.eoi_token_index,
                        hf.mm_tokens_per_image)
    inputs = {
        "input_ids": torch.tensor(rows),
        "pixel_values": torch.zeros(plan.micro_batch * plan.images, hf.vision_config.num_channels, side, side),
        "token_type_ids": torch.tensor(types),
    }
    return _causal(inputs, [[-100 if t else 0 for t in row] for row in types])


def step_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The summed training loss of one micro batch (model output dropped at once, as the engine does)."""
    import torch.nn.functional as F

    from automodel.trainer.loss import causal_lm_loss

    if batch.loss == "causal":  # the engine's one loss, chunked or not as the model was prepared
        return causal_lm_loss(model, {**batch.inputs, "labels": batch.labels, **batch.extra["targets"]})
    if batch.loss == "seq2seq":  # Whisper: labels are the decoder's next tokens already (no shift)
        logits = model(**batch.inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch.labels.reshape(-1),
                               reduction="sum")
    logits = model(**batch.inputs).logits
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    frames, rows = log_probs.shape[0], log_probs.shape[1]
    hf = modeling.base_model(model).config
    return F.ctc_loss(log_probs, batch.labels, [frames] * rows, [batch.extra["chars"]] * rows,
                      blank=hf.pad_token_id, reduction="none", zero_infinity=hf.ctc_zero_infinity).sum()


def sim_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config the simulator builds: wav2vec2's LayerDrop off, so every layer runs (its worst case)."""
    if model_type(config) == "wav2vec2":
        return {**config, "layerdrop": 0.0}
    return config


@contextlib.contextmanager
def _real_tensors():
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        yield


@contextlib.contextmanager
def fake_friendly():
    """Run transformers' multimodal and speech code on fake tensors (see the module docstring)."""
    from torch._subclasses import fake_impls
    from torch._subclasses import fake_tensor as ft

    aten = torch.ops.aten
    saved_limit, saved_env = ft.CONSTANT_NUMEL_LIMIT, os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    impls = {aten._ctc_loss.default: _fake_ctc_loss, aten._ctc_loss_backward.default: _fake_ctc_loss_backward}
    added = [op for op in impls if op not in fake_impls.op_implementations_dict]
    ft.CONSTANT_NUMEL_LIMIT = CONSTANT_NUMEL
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    fake_impls.op_implementations_dict.update({op: impls[op] for op in added})
    try:
        with _window_index_on_real_tensors():
            yield
    finally:
        ft.CONSTANT_NUMEL_LIMIT = saved_limit
        if saved_env is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = saved_env
        for op in added:
            fake_impls.op_implementations_dict.pop(op, None)


def _fake_ctc_loss(fake_mode, func, log_probs, targets, input_lengths, target_lengths, blank=0,  # noqa: ANN001
                   zero_infinity=False):  # noqa: ANN001
    """aten._ctc_loss with lengths as ints: (per-sample loss, log_alpha of (batch, T, 2 x max target + 1))."""
    frames, rows = log_probs.shape[0], log_probs.shape[1]
    return log_probs.new_empty((rows,)), log_probs.new_empty((rows, frames, 2 * max(target_lengths) + 1))


def _fake_ctc_loss_backward(fake_mode, func, grad, log_probs, *args, **kwargs):  # noqa: ANN001
    return log_probs.new_empty(log_probs.shape)


@contextlib.contextmanager
def _window_index_on_real_tensors():
    """Qwen2.5-VL's window index loops over aranges per image: compute it on real tensors, hand it back as
    constants (its cumulative window lengths are read with `.tolist()` in every windowed block)."""
    try:
        from transformers import vision_utils
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25
    except ImportError:
        yield
        return
    original = vision_utils.get_vision_window_index

    def on_real(grid_thw: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        from torch._subclasses.fake_tensor import FakeTensor

        fake = isinstance(grid_thw, FakeTensor)
        if not fake:
            return original(grid_thw, *args, **kwargs)
        mode = grid_thw.fake_mode
        with _real_tensors():
            out = original(grid_thw.constant, *args, **kwargs)
        return tuple(mode.fake_tensor_converter.from_real_tensor(mode, t, make_constant=True) for t in out)

    qwen25.get_vision_window_index = on_real
    try:
        yield
    finally:
        qwen25.get_vision_window_index = original
