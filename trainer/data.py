"""Task-independent data plumbing: read rows, pack, plan deterministic batches, collate.

A run's data order is a pure function of (seed, epoch, sample lengths, global batch): the batch of
optimizer step `k` can be recomputed from scratch, so the data position a checkpoint needs is just
the step number. Batches are length-bucketed (samples of similar length share a micro batch, little
padding) or packed (several samples per row, `position_ids` restart per sample so attention stays
inside each sample). Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer.loss import IGNORE_INDEX  # the label the loss skips

if TYPE_CHECKING:
    import torch

    from automodel.trainer.config import DataConfig

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# Global batches sorted together by length before they are shuffled again: large enough that a micro
# batch holds near-equal lengths, small enough that the order stays random at the scale of an epoch.
BUCKET_BATCHES = 16


def is_local_source(source: str) -> bool:
    """A local data file (by suffix) rather than an HF dataset name."""
    return source.lower().endswith(LOCAL_SUFFIXES)


@dataclass(frozen=True)
class Sample:
    """One training row. `labels` is aligned with `input_ids` (the loss shifts it); -100 is ignored.

    `position_ids` is set only for packed rows (positions restart at 0 for every packed sample).
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...] | None = None

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def data_relative(path: str, base: Path | None) -> str:
    """A file named in a data row: a relative path is relative to the data file's folder `base` (None for a
    Hub dataset: taken as it is). Images and audio clips alike."""
    file = Path(path).expanduser()
    return str(base / file if base is not None and not file.is_absolute() else file)


def log(message: str) -> None:
    """One line on rank 0's stderr (every rank builds the same samples, so one says what was dropped)."""
    import os
    import sys

    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


def row_label(index: int, source: str) -> str:
    """How an error names a data row: counted from 1, as an editor counts a JSONL file's lines (and a CSV's
    rows after its header), with the file or dataset it came from."""
    return f"row {index + 1} of {source}"


def read_split(data: DataConfig, *, validation: bool) -> tuple[str, list[dict[str, Any]]]:
    """(source, rows) of the training split or of the validation split (the recipe asks for validation
    samples only when `data.validation` is configured).

    Validation reads `data.validation.source` (default: the training source, then with its own split);
    the subset applies only when it is the training dataset. Every task adapter reads its rows here."""
    if not validation:
        return data.source, read_rows(data.source, split=data.split, subset=data.subset, field="data.source",
                                      limit=data.num_samples)
    if data.validation is None:
        raise ValueError("validation samples asked for, but data.validation is not configured")
    source = data.validation.source or data.source
    subset = data.subset if data.validation.source in (None, data.source) else None
    return source, read_rows(source, split=data.validation.split, subset=subset, field="data.validation.source",
                             limit=data.validation.num_samples)


def read_rows(source: str, *, split: str | None, field: str, subset: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` (all) rows of a local jsonl/json/parquet/csv file, or of a Hugging Face dataset
    `name` (+ subset) + `split`."""
    path = Path(source).expanduser()
    if is_local_source(source) or path.exists():
        if not path.is_file():
            raise UserError(f"data file {source} does not exist", field=field,
                            hint="give the path of a local .jsonl/.json/.parquet/.csv file")
        return _read_local(path, field, limit)[:limit]
    return _read_hub(source, subset, split or "train", field, limit)


def _read_local(path: Path, field: str, limit: int | None = None) -> list[dict[str, Any]]:
    try:
        return _parse_local(path, field, limit)
    except UnicodeDecodeError:
        raw = path.read_bytes()  # the reader's error offset is within one buffered chunk: find the line here
        try:
            raw.decode("utf-8")
            line = None
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
        where = f" (line {line})" if line else ""
        raise UserError(f"{path} is not UTF-8 text{where}", field=field,
                        hint="save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 OLD > NEW`)") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}", field=field) from None


def _parse_local(path: Path, field: str, limit: int | None) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(rows) >= limit:
                    break  # a .jsonl is read only as far as needed
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {lineno} is not valid JSON ({err.msg})", field=field,
                                    hint="every line of a .jsonl file must be one JSON object") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})", field=field) from None
        rows = data.get("data", data) if isinstance(data, dict) else data
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow's ArrowInvalid & co: a damaged or non-parquet file
            raise UserError(f"{path} is not a readable parquet file ({str(err).splitlines()[0]})",
                            field=field) from None
    else:
        raise UserError(f"{path} has an unsupported suffix", field=field, hint=f"use one of {LOCAL_SUFFIXES}")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path} must hold a list of JSON objects (one per example)", field=field)
    if not rows:
        raise UserError(f"{path} holds no examples", field=field)
    return rows


def _read_hub(name: str, subset: str | None, split: str, field: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{name!r} is not a local file, and loading Hub datasets needs `datasets`", field=field,
                        hint="pip install 'automodel-advisor[data]' or point at a local .jsonl file") from None
    from automodel.catalog import hub

    hub.require_reachable(name, field=field)  # at once, not after the client's retries
    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # offline, unknown name, gated, bad split: all are the user's to fix
        raise UserError(f"could not load dataset {name!r} split {split!r}: {type(err).__name__}: {err}",
                        field=field, hint="check the name and split, go online once to cache it, "
                        "or point at a local .jsonl file") from None
    # Audio columns stay undecoded (bytes or path): datasets decodes audio with torchcodec, which this engine
    # does not depend on; the asr adapter decodes with soundfile (trainer/audio.py).
    for column, feature in (getattr(dataset, "features", None) or {}).items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    # a dataset is memory-mapped Arrow: only the rows used become Python dicts
    return [dict(row) for row in itertools.islice(dataset, limit)]


def finish_sample(prompt_ids: list[int], answer_ids: list[int], *, answer_only: bool, max_len: int) -> Sample:
    """Concatenate, mask the prompt (answer-only loss) and truncate to `max_len` tokens.

    The first label is always ignored: nothing predicts the first token, packed or not.
    """
    ids = (list(prompt_ids) + list(answer_ids))[:max_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) if answer_only else list(prompt_ids)) + list(answer_ids)
    labels = labels[: len(ids)]
    if labels:
        labels[0] = IGNORE_INDEX
    return Sample(tuple(ids), tuple(labels))


def pack(samples: list[Sample], max_len: int, seed: int) -> list[Sample]:
    """Greedily concatenate shuffled samples into rows of at most `max_len` tokens."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    rows: list[Sample] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for index in order:
        sample = samples[index]
        if ids and len(ids) + len(sample.input_ids) > max_len:
            rows.append(Sample(tuple(ids), tuple(labels), tuple(positions)))
            ids, labels, positions = [], [], []
        ids += sample.input_ids
        labels += sample.labels
        positions += range(len(sample.input_ids))
    if ids:
        rows.append(Sample(tuple(ids), tuple(labels), tuple(positions)))
    return rows


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    return num_samples // global_batch


def epoch_batches(lengths: list[int], global_batch: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The global batches (sample indices) of one epoch: shuffled, length-bucketed, last partial dropped."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order = order[: steps_per_epoch(len(order), global_batch) * global_batch]
    batches: list[list[int]] = []
    chunk = global_batch * BUCKET_BATCHES
    for start in range(0, len(order), chunk):
        ranked = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [ranked[i : i + global_batch] for i in range(0, len(ranked), global_batch)]
    rng.shuffle(batches)
    return batches


def rank_micro_batches(batch: list[int], *, micro_batch: int, world: int, rank: int) -> list[list[int]]:
    """This rank's micro batches of one global batch; micro batch j goes to rank j % world.

    The partition into micro batches does not depend on the world size, so one process with gradient
    accumulation computes exactly the micro batches that several processes share.
    """
    micros = [batch[i : i + micro_batch] for i in range(0, len(batch), micro_batch)]
    return micros[rank::world]


def collate(samples: Iterable[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Packed rows get `position_ids` and no attention mask, which makes
    transformers build a block-diagonal causal mask (one block per packed sample)."""
    import torch

    samples = list(samples)
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        labels[row, : len(sample.labels)] = torch.tensor(sample.labels)
    batch = {"input_ids": ids, "labels": labels}
    if samples[0].position_ids is not None:
        positions = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.position_ids or ())
            positions[row, :n] = torch.tensor(sample.position_ids)
            # Padding continues a fresh "sample" of its own so it never joins a real one.
            positions[row, n:] = torch.arange(width - n)
        batch["position_ids"] = positions
    elif any(len(s.input_ids) < width for s in samples):
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            mask[row, : len(sample.input_ids)] = 1
        batch["attention_mask"] = mask
    return batch
