"""vlm rows -> samples: conversations with images, encoded by the model's processor, labelled by turn markers.

Two row forms (docs/training.md): chat rows (`messages` with `{"type": "image", "image": ...}` items, or
the TRL form: an `images` column and bare `{"type": "image"}` items) and column rows (`data.image_text`).
Both become one conversation, rendered by the processor's chat template and encoded by the processor
itself, so image tokens are expanded exactly as the model expects.

Labels: the assistant's turns are found from the chat template's own turn markers. A probe conversation
is rendered once to learn the text that opens an assistant turn (the generation prompt, e.g.
`<|im_start|>assistant\\n`) and the text that closes it (`<|im_end|>`); in each encoded sample, tokens
after an opening marker up to and including the closing marker are targets. Nothing is re-tokenised, and
image tokens, the prompt and padding are never targets. A sample longer than `data.max_seq_len` is
dropped (cutting it would cut through image tokens or the answer), as is one with more images than
`data.max_images`; both are counted and logged, and most samples dropped is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.catalog.errors import UserError
from automodel.trainer.data import IGNORE_INDEX
from automodel.trainer.data_formats import ChatFormat, ImageTextFormat, column_value
from automodel.trainer.images import resolve

_USER, _ASSISTANT = "\u00a7probe-user\u00a7", "\u00a7probe-assistant\u00a7"
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # one value per token
# A split whose encoded tensors (pixels mostly) fit in this many bytes keeps them: collating then costs no
# image decoding or resizing (the offline example's 512 images are ~14 MB). Larger splits re-encode each batch.
KEEP_ENCODED_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VlmSample:
    """One conversation: its rendered text and images (re-encoded at collate time, so pixels are not held for
    the whole dataset), the encoded ids and labels, and for generation the prompt length and the reply."""

    text: str
    images: tuple[Any, ...]
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_len: int
    answer: str | None = None
    encoded: Any = None  # the processor's output, kept when the split's pixels are small (KEEP_ENCODED_BYTES)

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class Markers:
    """Token ids opening and closing an assistant turn, from the chat template."""

    start: tuple[int, ...]
    end: tuple[int, ...]


def turn_markers(processor: Any) -> Markers:
    """Render a probe conversation to find the assistant turn's opening and closing text."""
    user = {"role": "user", "content": [{"type": "text", "text": _USER}]}
    reply = {"role": "assistant", "content": [{"type": "text", "text": _ASSISTANT}]}
    full = render(processor, [user, reply])
    head = render(processor, [user])
    prompt = render(processor, [user], generation_prompt=True)
    if prompt.startswith(head) and len(prompt) > len(head):
        start = prompt[len(head):]
    else:  # a template whose generation prompt is not a plain suffix: take the text between the turns
        start = full[full.index(_USER) + len(_USER): full.index(_ASSISTANT)]
    end = full[full.index(_ASSISTANT) + len(_ASSISTANT):].strip()
    tokenizer = processor.tokenizer
    ids = tuple(tokenizer(start, add_special_tokens=False).input_ids)
    if not ids:
        raise UserError("the chat template marks no assistant turn", field="model.name",
                        hint="use a model whose processor has a chat template with assistant turns")
    return Markers(ids, tuple(tokenizer(end, add_special_tokens=False).input_ids) if end else ())


def render(processor: Any, conversation: list[dict[str, Any]], *, generation_prompt: bool = False) -> str:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise UserError("the processor has no chat template", field="model.name",
                        hint="use an instruct/chat model, or save a chat_template.jinja beside the processor")
    return processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=template)


def encode(processor: Any, text: str, images: Sequence[Any]) -> dict[str, Any]:
    """The processor's output for one sample (batch of 1, PyTorch tensors)."""
    kwargs: dict[str, Any] = {"images": [list(images)] if images else None}
    if not images:
        kwargs.pop("images")
    return processor(text=[text], return_tensors="pt", **kwargs)


def configure(processor: Any, data: Any) -> None:
    """Apply data.min_pixels / data.max_pixels to a processor that resizes by pixel count (Qwen2-VL style)."""
    if data.min_pixels is None and data.max_pixels is None:
        return
    images = processor.image_processor
    size = dict(getattr(images, "size", None) or {})
    if "longest_edge" not in size or "shortest_edge" not in size or not hasattr(images, "merge_size"):
        field = "data.max_pixels" if data.max_pixels is not None else "data.min_pixels"
        raise UserError(f"{type(images).__name__} resizes to a fixed size, not by pixel count", field=field,
                        hint="remove it (it applies to Qwen2-VL-style processors)")
    if data.min_pixels is not None:
        size["shortest_edge"] = data.min_pixels
    if data.max_pixels is not None:
        size["longest_edge"] = data.max_pixels
    images.size = size


def conversation(row: Mapping[str, Any], spec: ChatFormat | ImageTextFormat, where: str,
                 base: Path | None) -> tuple[list[dict[str, Any]], list[Any], str | None]:
    """(messages for the template with bare image items, the image references in order (local paths made
    absolute; opened later), the last reply's text)."""
    if isinstance(spec, ImageTextFormat):
        return _columns(row, spec, where, base)
    try:
        messages = column_value(row, spec.messages_column)
    except UserError as err:
        raise UserError(f"{where}: {err.message}", field="data.chat.messages_column", hint=err.hint) from None
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) and isinstance(m.get("role"), str)
                                                 for m in messages):
        raise UserError(f"{where}: `{spec.messages_column}` must be a list of {{role, content}} messages",
                        field="data.chat.messages_column")
    pool = list(_listed(row.get(spec.images_column)))  # TRL form: images for bare {"type": "image"} items
    out, images, answer = [], [], None
    for message in messages:
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(items, list) or not all(isinstance(i, Mapping) and "type" in i for i in items):
            raise UserError(f"{where}: a message's content must be text or a list of {{type, ...}} items",
                            field="data.chat.messages_column")
        parts = []
        for item in items:
            if item["type"] == "image":
                ref = item.get("image", item.get("path", item.get("url")))
                if ref is None:
                    if not pool:
                        raise UserError(f"{where}: an image item has no image, and column `{spec.images_column}` "
                                        "has none left", field="data.chat.images_column",
                                        hint='give {"type": "image", "image": "path"} or an images column')
                    ref = pool.pop(0)
                images.append(resolve(ref, base))
                parts.append({"type": "image"})
            elif item["type"] == "text":
                parts.append({"type": "text", "text": str(item.get("text", ""))})
        out.append({"role": message["role"], "content": parts})
        if message["role"] == "assistant":
            answer = "".join(p["text"] for p in parts if p["type"] == "text")
    return out, images, answer


def _columns(row: Mapping[str, Any], spec: ImageTextFormat, where: str,
             base: Path | None) -> tuple[list[dict[str, Any]], list[Any], str]:
    def get(field: str, fetch: Any) -> Any:
        try:
            return fetch()
        except UserError as err:
            raise UserError(f"{where}: {err.message}", field=f"data.image_text.{field}", hint=err.hint) from None

    refs = _listed(get("image_column", lambda: column_value(row, spec.image_column)))
    if not refs:
        raise UserError(f"{where}: no image in column `{spec.image_column}`", field="data.image_text.image_column",
                        hint="every row needs an image; drop the row or fix the column")
    images = [resolve(ref, base) for ref in refs]
    prompt = get("prompt_template", lambda: spec.prompt(row))
    answer = get("answer_column", lambda: spec.answer(row))
    messages = [{"role": "system", "content": [{"type": "text", "text": spec.system_prompt}]}] if spec.system_prompt else []
    messages += [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]},
                 {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages, images, answer


def _listed(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [v for v in value if v is not None] if isinstance(value, list | tuple) else [value]


def label(ids: Sequence[int], markers: Markers, *, answer_only: bool, never: set[int]) -> tuple[list[int], int]:
    """(labels, where the last reply starts; -1 if none). Targets: every assistant reply from after its opening
    marker through its closing marker (all tokens but `never` ones when not answer-only). The first label
    is never a target (nothing predicts it)."""
    labels = [IGNORE_INDEX] * len(ids)
    n, k = len(ids), len(markers.start)
    last_prompt = -1
    i = 0
    while i + k <= n:
        if tuple(ids[i:i + k]) != markers.start:
            i += 1
            continue
        begin = i + k
        last_prompt = begin
        stop = _find(ids, markers.end, begin) if markers.end else -1
        finish = n if stop < 0 else stop + len(markers.end)
        labels[begin:finish] = ids[begin:finish]
        i = finish
    if not answer_only:
        labels = list(ids)
    labels = [IGNORE_INDEX if token in never else lab for token, lab in zip(ids, labels, strict=True)]
    if labels:
        labels[0] = IGNORE_INDEX
    return labels, last_prompt


def _find(ids: Sequence[int], pattern: tuple[int, ...], start: int) -> int:
    for i in range(start, len(ids) - len(pattern) + 1):
        if tuple(ids[i:i + len(pattern)]) == pattern:
            return i
    return -1


def never_targets(processor: Any) -> set[int]:
    """Image and video placeholder ids and the padding id: never targets, whatever the template says."""
    ids = set()
    for owner in (processor, processor.tokenizer):
        for name in ("image_token_id", "video_token_id", "boi_token_id", "eoi_token_id", "pad_token_id"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                ids.add(value)
    return ids

