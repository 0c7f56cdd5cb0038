"""vlm rows -> samples: turn-marker labels, both row forms, dropping, the processor without torchvision, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer.config import DataConfig, config_from_data
from automodel.trainer.data import IGNORE_INDEX
from automodel.trainer.tasks import vlm
from tests.trainer.vlm_assets import make_assets, processor, run_config

STYLES = ("gemma", "qwen")


def _data(source: Path, **fields: Any) -> DataConfig:
    return DataConfig(source=str(source), format=fields.pop("format", "chat"), **fields)


def _rows(tmp_path: Path, n: int = 6, seed: int = 3) -> Path:
    return make_assets.write_rows(tmp_path, "rows", n, seed)


@pytest.mark.parametrize("style", STYLES)
def test_only_the_assistant_reply_and_its_closing_marker_are_targets(tmp_path: Path, style: str) -> None:
    proc = processor(style)
    samples = vlm.build_samples(_data(_rows(tmp_path)), proc, validation=False, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    close = "<end_of_turn>" if style == "gemma" else "<|im_end|>"
    image_ids = {proc.tokenizer.convert_tokens_to_ids(t) for t in ("<image_soft_token>", "<|image_pad|>")} - {None}
    for sample, row in zip(samples, rows, strict=True):
        targets = [label for label in sample.labels if label != IGNORE_INDEX]
        answer = row["messages"][1]["content"][0]["text"]
        assert proc.tokenizer.decode(targets) == answer + close
        assert not image_ids & set(targets)
        assert sum(1 for t in sample.input_ids if t in image_ids) in (9, 4)  # the image tokens are in the ids
        assert sample.labels[0] == IGNORE_INDEX
        # the prompt (everything before the reply) is masked, and the reply starts right after the marker
        start = sample.prompt_len
        assert all(label == IGNORE_INDEX for label in sample.labels[:start])
        assert sample.labels[start] == sample.input_ids[start]


def test_trl_form_and_column_rows_encode_like_chat_rows(tmp_path: Path) -> None:
    proc = processor("qwen")
    chat_rows = [json.loads(line) for line in _rows(tmp_path, n=3).read_text().splitlines()]
    trl, columns = tmp_path / "trl.jsonl", tmp_path / "columns.jsonl"
    with open(trl, "w") as t, open(columns, "w") as c:
        for row in chat_rows:
            user, reply = row["messages"]
            image = user["content"][0]["image"]
            bare = [{"role": "user", "content": [{"type": "image"}, user["content"][1]]}, reply]
            t.write(json.dumps({"messages": bare, "images": [image]}) + "\n")
            c.write(json.dumps({"img": image, "q": "the image", "a": reply["content"][0]["text"]}) + "\n")
    expected = vlm.build_samples(_data(tmp_path / "rows.jsonl"), proc, validation=False, seed=0)
    from_trl = vlm.build_samples(_data(trl), proc, validation=False, seed=0)
    mapping = {"image_column": "img", "prompt_template": "Describe {q}.", "answer_column": "a"}
    from_columns = vlm.build_samples(_data(columns, format="image_text", image_text=mapping), proc,
                                     validation=False, seed=0)
    assert [s.input_ids for s in from_trl] == [s.input_ids for s in expected]
    assert [s.labels for s in from_columns] == [s.labels for s in expected]


def test_a_json_string_column_becomes_the_compact_json_answer(tmp_path: Path) -> None:
    """CORD-v2's ground_truth is a JSON string; `ground_truth.gt_parse` steps into it."""
    make_assets.draw(1, "red", "circle", random.Random(0)).save(tmp_path / "r.png")
    truth = {"gt_parse": {"menu": [{"nm": "tea", "price": "2"}]}, "meta": {"version": "2"}}
    (tmp_path / "cord.jsonl").write_text(json.dumps({"image": "r.png", "ground_truth": json.dumps(truth)}) + "\n")
    (tmp_path / "val.jsonl").write_text((tmp_path / "cord.jsonl").read_text())
    mapping = {"image_column": "image", "prompt_template": "Parse the receipt.", "answer_column": "ground_truth.gt_parse"}
    data = _data(tmp_path / "cord.jsonl", format="image_text", image_text=mapping,
                 validation={"source": str(tmp_path / "val.jsonl"), "exact_match": True})
    sample = vlm.build_samples(data, processor("qwen"), validation=True, seed=0)[0]
    assert sample.answer == '{"menu":[{"nm":"tea","price":"2"}]}'


def test_over_long_samples_are_dropped_counted_and_most_dropped_is_an_error(tmp_path: Path, capsys) -> None:
    proc = processor("gemma")
    source = _rows(tmp_path, n=8)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for i, row in enumerate(rows[:3]):  # three replies longer than the rest, by 2, 4 and 6 words
        row["messages"][1]["content"][0]["text"] += " and red" * (i + 1)
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = sorted(len(s.input_ids) for s in vlm.build_samples(_data(source), proc, validation=False, seed=0))
    limit = next(n for n in reversed(lengths) if 1 <= sum(1 for m in lengths if m > n) <= 4)
    kept = vlm.build_samples(_data(source, max_seq_len=limit), proc, validation=False, seed=0)
    assert len(kept) == sum(1 for n in lengths if n <= limit) < 8
    assert sorted(len(s.input_ids) for s in kept) == [n for n in lengths if n <= limit]  # never truncated
    assert "longer than data.max_seq_len" in capsys.readouterr().err
    with pytest.raises(UserError) as err:
        vlm.build_samples(_data(source, max_seq_len=lengths[0] - 1), proc, validation=False, seed=0)
    assert err.value.field == "data.max_seq_len" and "would be dropped" in err.value.message


def test_samples_with_more_images_than_max_images_are_dropped(tmp_path: Path) -> None:
    source = _rows(tmp_path, n=4)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    first = rows[0]["messages"][0]["content"]
    first.insert(0, dict(first[0]))  # two images in the first row
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(vlm.build_samples(_data(source), processor("qwen"), validation=False, seed=0)) == 4
    assert len(vlm.build_samples(_data(source, max_images=1), processor("qwen"), validation=False, seed=0)) == 3


def test_qwen_processor_without_torchvision_saves_and_loads(tmp_path: Path) -> None:
    """No torchvision here: the stock AutoProcessor of a Qwen2-VL directory fails on its video processor,
    and load_processor builds the image-only processor (same class name) that encodes images."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:  # a precondition of this machine, not a check
        pytest.skip("torchvision is installed: the stock processor loads, the fallback is not used")
    processor("qwen").save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text(json.dumps(make_assets.tiny_config("qwen", processor("qwen").tokenizer)))
    loaded = vlm.load_processor(str(tmp_path / "p"))
    assert type(loaded).__name__ == "Qwen2VLProcessor" and not hasattr(loaded, "video_processor")
    image = make_assets.draw(2, "blue", "square", random.Random(1))
    text = "<|vision_start|><|image_pad|><|vision_end|>hi"
    out = loaded(text=[text], images=[[image]], return_tensors="pt")
    pad = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and out["input_ids"][0].tolist().count(pad) == 4
    assert (tmp_path / "p" / "video_preprocessor_config.json").is_file()  # for the stock class, with torchvision


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda row, d: row["messages"][0]["content"][0].update(image="missing.png"), "missing.png does not exist"),
    (lambda row, d: (d / "bad.png").write_bytes(b"not a png") and
     row["messages"][0]["content"][0].update(image="bad.png"), "bad.png cannot be read"),
    (lambda row, d: row["messages"][0]["content"][0].pop("image"), "has no image"),
    (lambda row, d: row.update(chat=row.pop("messages")), "has no `messages`"),
])
def test_bad_rows_name_the_row_and_the_file(tmp_path: Path, mutate: Any, needle: str) -> None:
    source = _rows(tmp_path, n=3)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    mutate(rows[1], tmp_path)
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError) as err:
        vlm.build_samples(_data(source), processor("gemma"), validation=False, seed=0)
    assert f"row 2 of {source}" in err.value.message and needle in err.value.message


def test_a_column_row_without_an_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": None, "q": "x", "a": "y"}) + "\n")
    mapping = {"image_column": "image", "answer_column": "a"}
    with pytest.raises(UserError, match=r"row 1 of .*c.jsonl: no image in column `image`"):
        vlm.build_samples(_data(tmp_path / "c.jsonl", format="image_text", image_text=mapping), processor("gemma"),
                          validation=False, seed=0)


def test_cli_exits_2_without_a_traceback_on_a_missing_image(tmp_path: Path, capsys) -> None:
    import yaml

    from automodel.advisor.cli import main as automodel

    source = _rows(tmp_path, n=2)
    (tmp_path / "images" / "rows" / "0001.png").unlink()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(run_config(tmp_path, "gemma", source)))
    assert automodel(["finetune", "vlm", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "row 2 of" in err and "0001.png does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(("override", "field"), [
    ("model.vision=full", "model.vision"), ("data.max_pixels=1000", "data.max_pixels"),
])
def test_vlm_fields_are_refused_for_other_tasks(tmp_path: Path, override: str, field: str) -> None:
    data = run_config(tmp_path, "gemma", tmp_path / "x.jsonl", task="llm")
    with pytest.raises(UserError, match=field):
        config_from_data(data, [override])


def test_max_pixels_sets_the_qwen_resize_and_is_refused_for_a_fixed_size_processor(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    make_assets.draw(2, "red", "square", random.Random(0), size=200).save(tmp_path / "big.png")
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": "big.png"}]},
                        {"role": "assistant", "content": "two red squares"}]}
    big.write_text(json.dumps(row) + "\n")
    proc = make_assets.tiny_processor("qwen")  # configured in place: not the shared cached one
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def image_tokens(**pixels: int) -> int:
        return vlm.build_samples(_data(big, **pixels), proc, validation=False, seed=0)[0].input_ids.count(pad)

    assert image_tokens(max_pixels=28 * 28 * 4) == 4 and image_tokens(max_pixels=28 * 28 * 16) == 16
    with pytest.raises(UserError) as err:
        vlm.build_samples(_data(big, max_pixels=1000), processor("gemma"), validation=False, seed=0)
    assert err.value.field == "data.max_pixels"
