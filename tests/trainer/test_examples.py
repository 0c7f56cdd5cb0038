"""Every example config (examples/**/*.yaml) validates offline, the way `automodel validate` checks it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automodel.trainer.cli import check_run, resolve_model
from automodel.trainer.config import config_from_data, dump_yaml, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"llama_3_2_1b_squad.yaml", "llama_3_2_1b_hellaswag_peft.yaml", "qwen_3_0p6b_hellaswag.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # examples name their local files relative to the repository root
    cfg = load_config(path, environ={})
    assert cfg.task == path.parent.name  # examples/<task>/...
    # offline: every example's model is in the catalog or on disk, never fetched from the Hub
    assert resolve_model(cfg).source in ("catalog", "path")
    check_run(cfg, world_size=1)
    assert cfg.to_plan().seq_len == cfg.data.max_seq_len
    assert load_config(path, environ={}) == cfg
    # what a run saves as output_dir/config.yaml reads back to the same config (was only "dump is non-empty")
    assert config_from_data(yaml.safe_load(dump_yaml(cfg)), environ={}) == cfg


@pytest.mark.parametrize("name", ["llama_3_2_1b_squad.yaml", "qwen_3_0p6b_hellaswag.yaml",
                                  "llama_3_2_1b_hellaswag_peft.yaml"])
def test_online_examples_render_their_datasets_rows(name: str) -> None:
    """The column mappings fit the real datasets' row layout (rows copied from the dataset cards)."""
    cfg = load_config(ROOT / "examples" / "llm" / name, environ={})
    spec = cfg.data.format_spec()
    if cfg.data.source == "rajpurkar/squad":
        row = {"id": "5733be284776f41900661182", "title": "University_of_Notre_Dame",
               "context": "Architecturally, the school has a Catholic character.",
               "question": "What character does the school have?",
               "answers": {"text": ["a Catholic character"], "answer_start": [30]}}
        assert spec.prompt(row).endswith("Question: What character does the school have?\nAnswer:")
        assert spec.answer(row) == "a Catholic character"
    else:
        row = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
               "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
               "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift.",
                           ", the man puts on a christmas coat.", ", the man continues removing the snow on his car."],
               "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "train", "split_type": "indomain", "label": "3"}
        # ctx + " " + endings[int(label)], the lm-evaluation-harness convention for HellaSwag
        assert spec.prompt(row) + spec.completion(row) == (
            "Then, the man writes over the snow. then , the man continues removing the snow on his car.")
