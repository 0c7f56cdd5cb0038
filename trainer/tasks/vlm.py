"""The vision-language task adapter: any `AutoModelForImageTextToText` + `AutoProcessor` model.

Implements `automodel.trainer.tasks.TaskAdapter` (Qwen2-VL, Qwen2.5-VL, Gemma 3 and the catalog's other
`vlm` models). Rows become samples in trainer/vlm_data.py (turn-marker labels, over-long samples
dropped); images are opened with Pillow in trainer/images.py, and re-encoded at collate time so the
dataset's pixels are never all held at once.

What trains (`model.vision`): the vision tower and projector are frozen by default; LoRA wraps the
language model's linears only (never the vision tower or the output head). With `projector` or `full`
those parts train too (with LoRA, whole, saved in the adapter through peft's `modules_to_save`).

FSDP2 (trainer/modeling.py `shard_model`) shards every decoder block and every vision block. The
vision blocks' all-gathers are collectives, so a micro batch without any image would leave its rank
out of them and hang the others: such a batch gets one extra row holding a small blank image whose
labels are all ignored (it adds nothing to the loss or the gradients), so every rank runs the vision
tower at every forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer.config import DataConfig
from automodel.trainer.data import IGNORE_INDEX, is_local_source, log, read_split, row_label
from automodel.trainer.data_formats import ImageTextFormat
from automodel.trainer.images import load_processor as _load_processor
from automodel.trainer.images import open_image
from automodel.trainer.loss import target_positions

# The adapter's target count and loss are the llm adapter's: the same causal-LM head and next-token labels.
from automodel.trainer.tasks.llm import count_targets, forward_loss  # noqa: F401
from automodel.trainer.vlm_data import (
    KEEP_ENCODED_BYTES,
    TOKEN_KEYS,
    VlmSample,
    configure,
    conversation,
    encode,
    label,
    never_targets,
    render,
    turn_markers,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

# Where multimodal wrappers keep the vision tower and the projector (transformers 5 layout).
_VISION_NAMES = ("visual", "vision_tower", "vision_model")
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger")


def load_processor(source: str, *, trust_remote_code: bool = False) -> Any:
    return _load_processor(source, trust_remote_code=trust_remote_code)


def build_samples(data: DataConfig, processor: Any, *, validation: bool, seed: int) -> list[VlmSample]:
    """Read, check and encode one split's rows; drop (and count) over-long and too-many-image samples."""
    source, rows = read_split(data, validation=validation)
    spec = data.format_spec()
    if not isinstance(spec, ImageTextFormat) and data.format != "chat":
        raise UserError(f"task vlm reads chat or image_text rows, not {data.format}", field="data.format",
                        hint="set data.format=chat (messages with image items) or image_text (columns)")
    configure(processor, data)
    base = Path(source).expanduser().parent if is_local_source(source) else None
    markers, never = turn_markers(processor), never_targets(processor)
    keep_answer = validation and data.validation is not None and data.validation.exact_match
    samples, too_long, too_many, held = [], 0, 0, 0
    for index, row in enumerate(rows):
        where = row_label(index, source)
        messages, refs, answer = conversation(row, spec, where, base)
        if data.max_images is not None and len(refs) > data.max_images:
            too_many += 1
            continue
        text = render(processor, messages)
        images = [open_image(ref, where=where) for ref in refs]
        try:
            encoded = encode(processor, text, images)
        except (ValueError, TypeError) as err:  # the processor's own checks (image count vs placeholders)
            raise UserError(f"{where}: the processor rejects it: {str(err).splitlines()[0]}",
                            field="data.source") from None
        ids = encoded["input_ids"][0].tolist()
        if len(ids) > data.max_seq_len:
            too_long += 1
            continue
        labels, prompt_len = label(ids, markers, answer_only=data.answer_only_loss, never=never)
        if prompt_len < 0:
            raise UserError(f"{where}: the conversation has no assistant turn to learn", field="data.source",
                            hint="every row needs an assistant reply")
        held += sum(v.numel() * v.element_size() for v in encoded.values())
        samples.append(VlmSample(text, tuple(refs), tuple(ids), tuple(labels), prompt_len,
                                 answer if keep_answer else None, dict(encoded) if held <= KEEP_ENCODED_BYTES else None))
    if held > KEEP_ENCODED_BYTES:  # all or nothing: every sample of a split is collated the same way
        samples = [replace(s, encoded=None) for s in samples]
    dropped = too_long + too_many
    if dropped:
        log(f"{source}: dropped {too_long} sample(s) longer than data.max_seq_len={data.max_seq_len} tokens and "
            f"{too_many} with more than data.max_images={data.max_images} image(s); {len(samples)} kept")
    if dropped * 2 > len(rows):
        path = "data.max_seq_len" if too_long >= too_many else "data.max_images"
        raise UserError(f"{dropped} of {len(rows)} samples of {source} would be dropped ({too_long} longer than "
                        f"{data.max_seq_len} tokens with their image tokens, {too_many} with too many images)",
                        field=path, hint="raise data.max_seq_len (or lower data.max_pixels to spend fewer tokens "
                        "per image), or raise data.max_images")
    return samples


def sample_length(sample: VlmSample) -> int:
    return len(sample.input_ids)


def collate(samples: list[VlmSample], processor: Any) -> dict[str, torch.Tensor]:
    """Right-padded token tensors, the images' tensors concatenated in order, labels. A batch without any
    image gets a blank-image row with no targets (see the module docstring)."""
    import torch

    rows = list(samples)
    if not any(s.images for s in rows):
        rows.append(_blank_sample(processor))
    encoded = []
    for sample in rows:
        if sample.encoded is not None:
            encoded.append(sample.encoded)
            continue
        images = [open_image(ref, where="a training sample") for ref in sample.images]
        out = encode(processor, sample.text, images)
        if out["input_ids"][0].tolist() != list(sample.input_ids):
            raise RuntimeError("the processor encodes a sample differently from when it was built")
        encoded.append(out)
    width = max(len(s.input_ids) for s in rows)
    pad = processor.tokenizer.pad_token_id
    batch: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for e in encoded for k in e):  # a text-only row has no pixel keys
        values = [e.get(key) for e in encoded]
        if key in TOKEN_KEYS:
            fill = pad if key == "input_ids" else 0
            batch[key] = torch.stack([torch.nn.functional.pad(v[0], (0, width - v.shape[1]), value=fill)
                                      if v is not None else torch.zeros(width, dtype=torch.long) for v in values])
        else:
            batch[key] = torch.cat([v for v in values if v is not None], dim=0)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        labels[row, : len(sample.labels)] = torch.tensor(sample.labels)
    batch["labels"] = labels
    batch.setdefault("attention_mask", (torch.arange(width)[None] < torch.tensor(
        [[len(s.input_ids)] for s in rows])).long())
    return {**batch, **target_positions(labels)}  # found here, on the host, as the llm collator does


@lru_cache(maxsize=4)
def _blank_sample(processor: Any) -> VlmSample:
    from PIL import Image

    image = Image.new("RGB", (56, 56), (128, 128, 128))
    text = render(processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "."}]}])
    encoded = dict(encode(processor, text, [image]))
    ids = tuple(encoded["input_ids"][0].tolist())
    return VlmSample(text, (image,), ids, (IGNORE_INDEX,) * len(ids), -1, None, encoded)


def model_class() -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def vision_parts(model: nn.Module) -> tuple[Any, Any]:
    """(the vision tower, the projector) of a multimodal wrapper; either may be None. Qwen2-VL keeps its
    projector (`merger`) inside the tower, Gemma 3 and LLaVA beside it."""
    from automodel.trainer.modeling import base_model

    base = base_model(model)
    holders = [h for h in (getattr(base, "model", None), base) if h is not None]
    tower = next((getattr(h, n) for h in holders for n in _VISION_NAMES if hasattr(h, n)), None)
    if tower is not None:
        holders.append(tower)
    projector = next((getattr(h, n) for h in holders for n in _PROJECTOR_NAMES if hasattr(h, n)), None)
    return tower, projector


def prepare_model(model: nn.Module, cfg: Any) -> None:
    """Freeze the vision side per `model.vision`; with LoRA also everything else outside the language model
    (the output head, unless tied to the embeddings), so LoRA trains the language model's linears only."""
    from automodel.trainer.modeling import language_model

    tower, projector = vision_parts(model)
    if tower is None:
        raise UserError(f"{type(model).__name__} has no vision tower that task vlm recognises", field="model.name",
                        hint="use an image-text model (AutoModelForImageTextToText), or task=llm")
    chosen = {"frozen": [], "projector": [projector], "full": [tower, projector]}[cfg.model.vision]
    train = {id(p) for part in chosen if part is not None for p in part.parameters()}
    vision = {id(p) for part in (tower, projector) if part is not None for p in part.parameters()}
    text = {id(p) for p in language_model(model).parameters()}
    for param in model.parameters():
        if id(param) in vision:
            param.requires_grad_(id(param) in train)
        elif cfg.peft.method != "none" and id(param) not in text:
            param.requires_grad_(False)


def evaluate_extra(model: nn.Module, processor: Any, samples: Sequence[VlmSample], d: Any,
                   autocast: Any) -> dict[str, float]:
    """`val_exact_match` when data.validation.exact_match kept the answers: greedy generation, compared after
    stripping whitespace. Every rank runs the same number of forwards (FSDP2 all-gathers are collective)."""
    from automodel.trainer.vlm_generate import exact_match

    if not samples or any(s.answer is None for s in samples):
        return {}
    return {"val_exact_match": exact_match(model, processor, list(samples), d, autocast)}
