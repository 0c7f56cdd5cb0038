"""Data plumbing: file formats, prompt masking, chat masking, packing, deterministic batches, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer.data import (
    IGNORE_INDEX,
    Sample,
    collate,
    epoch_batches,
    finish_sample,
    pack,
    rank_micro_batches,
    read_rows,
)

ROWS = [{"question": "copy", "input": "a b", "answer": "a b"}, {"question": "sort", "input": "c a", "answer": "a c"}]


def _data_config(tiny_config, *overrides):
    return tiny_config(*overrides).data


def _tokenizer(tiny_assets: Path):
    from automodel.trainer.tasks.llm import load_processor

    return load_processor(str(tiny_assets / "model"))


def test_local_formats_read_the_same_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text("question,input,answer\ncopy,a b,a b\nsort,c a,a c\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for suffix in ("jsonl", "json", "csv", "parquet"):
        assert read_rows(str(tmp_path / f"d.{suffix}"), split=None, field="data.source") == ROWS, suffix
    assert read_rows(str(tmp_path / "d.jsonl"), split=None, field="data.source", limit=1) == ROWS[:1]


def test_malformed_jsonl_names_field_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(UserError) as err:
        read_rows(str(bad), split=None, field="data.source")
    assert err.value.field == "data.source" and "line 2" in err.value.message
    with pytest.raises(UserError, match="does not exist"):
        read_rows(str(tmp_path / "missing.jsonl"), split=None, field="data.source")


def test_missing_column_names_the_mapping_field(tiny_config, tiny_assets: Path, tmp_path: Path) -> None:
    from automodel.trainer.tasks.llm import build_samples

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "copy", "input": "a", "reply": "a"}) + "\n")
    cfg = tiny_config(f"data.source={data}")
    with pytest.raises(UserError) as err:
        build_samples(cfg.data, _tokenizer(tiny_assets), validation=False, seed=0)
    assert err.value.field == "data.instruction.answer_column"
    assert "row 1 of" in err.value.message and "answer" in err.value.message


def test_answer_only_masks_the_prompt(tiny_config, tiny_assets: Path) -> None:
    from automodel.trainer.tasks.llm import build_samples

    tok = _tokenizer(tiny_assets)
    sample = build_samples(tiny_config().data, tok, validation=False, seed=0)[0]
    first = json.loads((tiny_assets / "data/train.jsonl").read_text().splitlines()[0])
    answer = tok(first["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    targets = [t for t in sample.labels if t != IGNORE_INDEX]
    assert targets == answer
    assert list(sample.input_ids[-len(answer):]) == answer
    full = build_samples(tiny_config("data.answer_only_loss=false").data, tok, validation=False, seed=0)[0]
    assert full.labels[1:] == full.input_ids[1:] and full.labels[0] == IGNORE_INDEX


def test_truncation_and_dropping_samples_without_targets() -> None:
    sample = finish_sample([1, 2, 3], [4, 5, 6], answer_only=True, max_len=5)
    assert sample.input_ids == (1, 2, 3, 4, 5) and sample.labels == (-100, -100, -100, 4, 5)
    assert finish_sample([1, 2, 3], [4], answer_only=True, max_len=3).num_targets == 0


def test_chat_masks_everything_but_assistant_turns(tiny_assets: Path, tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.tasks.llm import build_samples

    tok = _tokenizer(tiny_assets)
    messages = [{"role": "user", "content": "reverse a b c"}, {"role": "assistant", "content": "c b a"},
                {"role": "user", "content": "sort c a"}, {"role": "assistant", "content": "a c"}]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    cfg = tiny_config(f"data.source={data}", "data.format=chat", "data.instruction=null")
    sample = build_samples(cfg.data, tok, validation=False, seed=0)[0]
    target_text = tok.decode([t for t in sample.labels if t != IGNORE_INDEX])
    assert "c b a" in target_text and "a c" in target_text
    assert "reverse" not in target_text and "sort" not in target_text and "user" not in target_text
    bad = tmp_path / "bad_chat.jsonl"
    bad.write_text(json.dumps({"messages": "hello"}) + "\n")
    with pytest.raises(UserError) as err:
        build_samples(tiny_config(f"data.source={bad}", "data.format=chat", "data.instruction=null").data, tok,
                      validation=False, seed=0)
    assert err.value.field == "data.chat.messages_column"


def test_pack_keeps_every_token_and_restarts_positions() -> None:
    samples = [Sample(tuple(range(10 * i, 10 * i + n)), (-100,) + tuple(range(10 * i + 1, 10 * i + n)))
               for i, n in enumerate([3, 5, 4, 6, 2])]
    rows = pack(samples, 8, seed=1)
    assert all(len(r.input_ids) <= 8 for r in rows)
    assert sorted(t for r in rows for t in r.input_ids) == sorted(t for s in samples for t in s.input_ids)
    for row in rows:
        assert row.position_ids is not None
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE_INDEX for i in starts)  # no prediction across samples
    batch = collate(rows, pad_id=0)
    assert "position_ids" in batch and "attention_mask" not in batch


def test_batches_are_deterministic_complete_and_split_across_ranks() -> None:
    lengths = [5 + (i * 7) % 13 for i in range(100)]
    one = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert one == epoch_batches(lengths, 8, seed=3, epoch=0)
    assert one != epoch_batches(lengths, 8, seed=3, epoch=1) and one != epoch_batches(lengths, 8, seed=4, epoch=0)
    flat = [i for b in one for i in b]
    assert len(one) == 12 and len(set(flat)) == 96  # 100 // 8 batches, nothing repeated
    # length bucketing: a micro batch holds near-equal lengths
    spread = sum(max(lengths[i] for i in b[:4]) - min(lengths[i] for i in b[:4]) for b in one) / len(one)
    assert spread < 4
    for batch in one:
        single = rank_micro_batches(batch, micro_batch=2, world=1, rank=0)
        shared = [rank_micro_batches(batch, micro_batch=2, world=2, rank=r) for r in (0, 1)]
        assert sorted(map(tuple, single)) == sorted(map(tuple, shared[0] + shared[1]))


def test_packed_rows_match_separate_samples(tiny_assets: Path) -> None:
    """transformers turns restarting position_ids into a block-diagonal mask: packing changes nothing."""
    import torch

    from automodel.trainer.modeling import build_model
    from automodel.trainer.tasks.llm import forward_loss

    config = json.loads((tiny_assets / "model/config.json").read_text())
    model = build_model(config, device="cpu", seed=0).eval()
    samples = [Sample((1, 5, 6, 7, 8), (-100, 5, 6, 7, 8)), Sample((1, 9, 10), (-100, 9, 10))]
    with torch.no_grad():
        separate = sum(forward_loss(model, collate([s], 0)) for s in samples)
        packed = forward_loss(model, collate(pack(samples, 16, seed=0), 0))
        padded = forward_loss(model, collate(samples, 0))
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, separate, rtol=1e-5, atol=1e-5)


def test_hub_dataset_name_subset_split_and_offline_error(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load(name, subset, split):
        calls.append((name, subset, split))
        if name == "org/offline":
            raise ConnectionError("Couldn't reach the Hub (offline)")
        return ROWS

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert read_rows("org/data", split=None, subset="en", field="data.source") == ROWS
    assert calls == [("org/data", "en", "train")]
    assert read_rows("org/data", split="train", field="data.source", limit=1) == ROWS[:1]  # num_samples
    with pytest.raises(UserError) as err:
        read_rows("org/offline", split="validation", field="data.validation.source")
    assert err.value.field == "data.validation.source" and "offline" in err.value.message


def test_committed_tiny_assets_are_what_make_assets_writes(make_assets, tmp_path: Path) -> None:
    """examples/llm/tiny/ is reproducible from its script (no hand-edited drift)."""
    committed = Path(make_assets.__file__).parent
    make_assets.write_assets(tmp_path)
    for name in ("model/config.json", "model/chat_template.jinja", "data/train.jsonl", "data/val.jsonl"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
    # The tokenizer by behaviour, not bytes (serialisation may change across `tokenizers` versions).
    from transformers import AutoTokenizer

    ours, theirs = AutoTokenizer.from_pretrained(tmp_path / "model"), AutoTokenizer.from_pretrained(committed / "model")
    assert ours.get_vocab() == theirs.get_vocab()
    text = (committed / "data/val.jsonl").read_text()[:2000]
    assert ours(text).input_ids == theirs(text).input_ids
