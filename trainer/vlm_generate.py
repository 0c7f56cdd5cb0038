"""Greedy generation for the vlm validation figure (`val_exact_match`), safe under FSDP2.

transformers' `generate` stops early when every row has finished, and a sharded model's forwards are
collectives: ranks that stop at different steps would hang. So this loop is the engine's own: every
rank runs the same number of rounds and the same number of steps per round (the longest reference
answer in tokens, plus the closing marker), recomputing the whole sequence at each step (no KV cache;
small validation sets only, see `data.validation.exact_match`). Only the last position of each row goes
through the output head (`logits_to_keep`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from automodel.trainer import distributed
from automodel.trainer.loss import TARGET_KEYS
from automodel.trainer.vlm_data import TOKEN_KEYS, VlmSample, turn_markers

if TYPE_CHECKING:
    from torch import nn

ROWS_PER_FORWARD = 8


def exact_match(model: nn.Module, processor: Any, samples: list[VlmSample], d: Any, autocast: Any) -> float:
    """Fraction of `samples` whose greedy reply equals their reference answer (whitespace-stripped)."""
    import torch

    tokenizer = processor.tokenizer
    end = turn_markers(processor).end
    stops = {tokenizer.eos_token_id, *(end[-1:] if end else ())} - {None}
    steps = max(len(tokenizer(s.answer or "", add_special_tokens=False).input_ids) for s in samples) + len(end) + 1
    chunks = [samples[i : i + ROWS_PER_FORWARD] for i in range(0, len(samples), ROWS_PER_FORWARD)]
    totals = torch.zeros(2, dtype=torch.float64, device=d.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _, chunk, counts in distributed.eval_rounds(chunks, d):
            weight = 1.0 if counts else 0.0  # short ranks repeat a chunk that does not count
            replies = _greedy(model, processor, chunk, steps, stops, d, autocast)
            for sample, reply in zip(chunk, replies, strict=True):
                totals[0] += weight * float(reply.strip() == (sample.answer or "").strip())
                totals[1] += weight
    if was_training:
        model.train()
    distributed.all_reduce_sum(totals, d)
    return (totals[0] / totals[1].clamp(min=1)).item()


def _greedy(model: nn.Module, processor: Any, chunk: list[VlmSample], steps: int, stops: set[int], d: Any,
            autocast: Any) -> list[str]:
    import torch

    from automodel.trainer.tasks.vlm import collate

    base = collate(chunk, processor)  # whole samples: their pixels, and token types over the prompts
    for key in ("labels", *TARGET_KEYS):  # the loss's, not the model's
        base.pop(key)
    rows = [list(s.input_ids[: s.prompt_len]) for s in chunk]
    extra_rows = base["input_ids"].shape[0] - len(rows)  # the blank-image row of an image-less chunk
    generated: list[list[int]] = [[] for _ in rows]
    pad = processor.tokenizer.pad_token_id
    for _ in range(steps):
        full = base["input_ids"].shape[1]
        width = max(full, *(len(r) for r in rows))  # never narrower than the blank row
        batch = dict(base)
        for key in [k for k in base if k in TOKEN_KEYS]:  # generated tokens are text: type 0
            grown = torch.zeros((base[key].shape[0], width), dtype=base[key].dtype)
            grown[len(rows):, :full] = base[key][len(rows):]
            for i, sample in enumerate(chunk):
                grown[i, : sample.prompt_len] = base[key][i, : sample.prompt_len]
            batch[key] = grown
        for i, row in enumerate(rows):
            batch["input_ids"][i, : len(row)] = torch.tensor(row)
            batch["input_ids"][i, len(row):] = pad
            batch["attention_mask"][i, : len(row)] = 1
        last = torch.zeros((len(rows) + extra_rows, width), dtype=torch.bool)
        for i, row in enumerate(rows):
            last[i, len(row) - 1] = True
        last[len(rows):, 0] = True  # the blank row's logit is computed and ignored
        batch = {k: v.to(d.device) for k, v in batch.items()}
        with autocast:
            logits = model(**batch, logits_to_keep=last.to(d.device), use_cache=False).logits
        choice = logits.float().argmax(-1).tolist()
        for i in range(len(rows)):
            token = choice[i]
            if generated[i] and generated[i][-1] in stops:
                token = generated[i][-1]  # finished rows keep stepping (same forwards everywhere) but stay put
            else:
                rows[i].append(token)
            generated[i].append(token)
    replies = []
    for tokens in generated:
        cut = next((j for j, t in enumerate(tokens) if t in stops), len(tokens))
        replies.append(processor.tokenizer.decode(tokens[:cut], skip_special_tokens=True))
    return replies
