"""The LLM task adapter: tokenizer, samples from rows, collator, model class and loss.

Implements `automodel.trainer.tasks.TaskAdapter` (see there); the recipe reaches it through
`adapter_for("llm")` and never looks inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from automodel.catalog import hub
from automodel.catalog.errors import UserError
from automodel.trainer.config import DataConfig
from automodel.trainer.data import IGNORE_INDEX, Sample, finish_sample, pack, read_split, row_label
from automodel.trainer.data import collate as collate_samples
from automodel.trainer.data_formats import ChatFormat, CompletionFormat, InstructionFormat, column_value
from automodel.trainer.loss import causal_lm_loss, target_positions

if TYPE_CHECKING:
    import torch
    from torch import nn


def load_processor(source: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local model directory or Hub id (offline-safe: a cache miss is a UserError)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer for {source!r}: {err}".splitlines()[0], field="model.name",
                        hint="give a local directory with tokenizer files, or go online once to cache the "
                        f"model (gated models also need {hub.LOGIN})") from None
    if tokenizer.pad_token_id is None:  # common for base models; padding is always masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_samples(data: DataConfig, tokenizer: Any, *, validation: bool, seed: int) -> list[Sample]:
    """Read, format, tokenize, mask and truncate (and pack, for training) the rows of one split."""
    source, rows = read_split(data, validation=validation)
    spec = data.format_spec()
    samples = []
    for index, row in enumerate(rows):
        sample = _sample(row, row_label(index, source), spec, tokenizer, data)
        if sample.num_targets:  # a prompt longer than max_seq_len leaves nothing to learn
            samples.append(sample)
    if not samples:
        raise UserError(f"no sample of {source} keeps a target token within {data.max_seq_len} tokens",
                        field="data.max_seq_len", hint="raise data.max_seq_len or shorten the prompts")
    if data.packing and not validation:
        samples = pack(samples, data.max_seq_len, seed)
    return samples


def _sample(row: Mapping[str, Any], where: str, spec: Any, tokenizer: Any, data: DataConfig) -> Sample:
    if isinstance(spec, ChatFormat):
        return _chat_sample(row, where, spec, tokenizer, data)
    if isinstance(spec, InstructionFormat):
        prompt = _field(lambda: spec.prompt(row), where, "data.instruction.prompt_template")
        answer = _field(lambda: spec.answer(row), where, "data.instruction.answer_column")
    else:
        assert isinstance(spec, CompletionFormat)
        prompt = _field(lambda: spec.prompt(row), where, "data.completion.prompt_column")
        answer = _field(lambda: spec.completion(row), where, "data.completion.completion_column")
    prompt_ids = tokenizer(prompt).input_ids if prompt else _bos(tokenizer)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]  # the model learns to stop
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + eos
    return finish_sample(prompt_ids, answer_ids, answer_only=data.answer_only_loss, max_len=data.max_seq_len)


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _field(get: Any, where: str, field: str) -> Any:
    """Run a column lookup; a missing column names the config field and the row."""
    try:
        return get()
    except UserError as err:
        raise UserError(f"{where}: {err.message}", field=field, hint=err.hint) from None


def _chat_sample(row: Mapping[str, Any], where: str, spec: ChatFormat, tokenizer: Any, data: DataConfig) -> Sample:
    """Render with the chat template; with answer-only loss, only assistant turns are targets."""
    field = "data.chat.messages_column"
    messages = _field(lambda: column_value(row, spec.messages_column), where, field)
    if not isinstance(messages, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise UserError(f"{where}: `{spec.messages_column}` must be a list of {{role, content}} strings",
                        field=field)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template", field="data.format",
                        hint="use format=instruction or completion, or a model with a chat template")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []  # character spans of assistant replies in `text`; a token overlapping one is a target
    for turn, message in enumerate(messages):
        if message["role"] == "assistant" or not data.answer_only_loss:
            start = len(tokenizer.apply_chat_template(messages[:turn], tokenize=False,
                                                      add_generation_prompt=message["role"] == "assistant"))
            end = len(tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False))
            spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded.input_ids)[: data.max_seq_len]
    labels = [
        token if any(begin < e and finish > s for s, e in spans) else IGNORE_INDEX
        for token, (begin, finish) in zip(ids, encoded.offset_mapping, strict=False)
    ]
    if labels:
        labels[0] = IGNORE_INDEX
    return Sample(tuple(ids), tuple(labels))


def sample_length(sample: Sample) -> int:
    return len(sample.input_ids)


def collate(samples: list[Sample], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Padded ids, mask and labels, plus the loss's target positions (found here, on the host)."""
    batch = collate_samples(samples, tokenizer.pad_token_id)
    return {**batch, **target_positions(batch["labels"])}


def model_class() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def prepare_model(model: nn.Module, cfg: Any) -> None:
    """Nothing to freeze beyond what LoRA freezes: a decoder-only model is all language model."""


def count_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token targets: every label but the first of each row (the loss shifts by one)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def evaluate_extra(model: nn.Module, processor: Any, samples: Any, d: Any, autocast: Any) -> dict[str, float]:
    return {}


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed fp32 next-token cross-entropy over the target tokens of one micro batch: the engine's one
    loss (trainer/loss.py), which computes the output head at target positions only, chunk by chunk."""
    return causal_lm_loss(model, batch)
