"""Overrides: the token forms, schema typing, precedence, ${ENV} interpolation, unknown keys, error lines."""

from __future__ import annotations

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer.config import TrainConfig, config_from_data
from automodel.trainer.overrides import (
    REDACTED,
    is_secret_name,
    redact_text,
    schema_paths,
    split_overrides,
    typed_value,
)

BASE = {
    "model": {"name": "tiny"},
    "data": {"source": "train.jsonl", "format": "completion", "answer_only_loss": False,
             "completion": {"text_column": "text"}},
    "schedule": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 10},
    "peft": {"rank": 4},
}


def test_three_token_forms_and_dashes() -> None:
    tokens = ["peft.rank=8", "--optimizer.lr=1e-4", "--data.max-seq-len", "128", "output_dir=/tmp/a=b"]
    assert split_overrides(tokens) == [
        ("peft.rank", "8"), ("optimizer.lr", "1e-4"), ("data.max_seq_len", "128"), ("output_dir", "/tmp/a=b"),
    ]


@pytest.mark.parametrize("tokens", [["--peft.rank"], ["peft.rank"], ["--peft.rank", "--seed=1"], ["peft..rank=1"]])
def test_malformed_tokens_name_the_token(tokens: list[str]) -> None:
    with pytest.raises(UserError) as err:
        split_overrides(tokens)
    assert tokens[0] in err.value.render()


def test_values_are_typed_by_the_schema() -> None:
    assert typed_value(TrainConfig, "peft.rank", "8") == 8
    assert typed_value(TrainConfig, "peft.target_modules", "[q_proj, v_proj]") == ["q_proj", "v_proj"]
    assert typed_value(TrainConfig, "peft.target_modules", "all-linear") == "all-linear"
    assert typed_value(TrainConfig, "optimizer.betas", "[0.8, 0.95]") == [0.8, 0.95]
    assert typed_value(TrainConfig, "optimizer.grad_clip", "null") is None
    # text fields keep the text as written: no YAML surprises for numbers, colons or `yes`
    assert typed_value(TrainConfig, "model.name", "123") == "123"
    assert typed_value(TrainConfig, "data.source", "yes") == "yes"
    assert typed_value(TrainConfig, "data.split", "null") is None
    template = "Q: {question} A:"
    assert typed_value(TrainConfig, "data.instruction.prompt_template", template) == template


def test_precedence_defaults_yaml_command_line() -> None:
    cfg = config_from_data(BASE, ["peft.rank=8", "--peft.rank", "12", "optimizer.lr=3e-4"], environ={})
    assert cfg.peft.rank == 12  # the last command-line value wins over an earlier one and over YAML (4)
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.peft.alpha == 32.0  # untouched default
    assert config_from_data(BASE, [], environ={}).peft.rank == 4  # YAML over the default 16
    assert BASE["peft"] == {"rank": 4}  # the caller's data is not mutated


def test_override_creates_a_missing_section() -> None:
    data = {**BASE, "data": {"source": "org/ds", "format": "completion", "completion": {"prompt_column": "p",
                                                                                       "completion_column": "c"}}}
    cfg = config_from_data(data, ["data.validation.split=test", "data.validation.num_samples=5"], environ={})
    assert cfg.data.validation is not None and cfg.data.validation.split == "test"
    assert cfg.data.validation.num_samples == 5


def test_env_interpolation_with_defaults_and_escape() -> None:
    data = {**BASE, "output_dir": "${RUNS}/x-${TAG,dev}", "model": {"name": "$${LITERAL}"}}
    cfg = config_from_data(data, ["seed=${SEED,7}", "peft.rank=${RANK_R}"], environ={"RUNS": "/r", "RANK_R": "3"})
    assert cfg.output_dir == "/r/x-dev"
    assert cfg.model.name == "${LITERAL}"
    assert cfg.seed == 7 and cfg.peft.rank == 3


def test_unset_env_without_default_names_the_path() -> None:
    with pytest.raises(UserError) as err:
        config_from_data({**BASE, "output_dir": "${NOPE_NOT_SET}"}, [], environ={})
    assert err.value.field == "output_dir"
    assert "NOPE_NOT_SET" in err.value.message


@pytest.mark.parametrize(
    ("data", "overrides", "path", "suggestion"),
    [
        (BASE, ["peft.rnak=8"], "peft.rnak", "peft.rank"),
        (BASE, ["--optimizer.learning_rate=1"], "optimizer.learning_rate", None),
        (BASE, ["rank=8"], "rank", "peft.rank"),
        ({**BASE, "schedul": {}}, [], "schedul", "schedule"),
        ({**BASE, "data": {**BASE["data"], "completion": {"text_colum": "t"}}}, [], "data.completion.text_colum",
         "data.completion.text_column"),
    ],
)
def test_unknown_keys_name_the_path_and_suggest(data: dict, overrides: list[str], path: str,
                                                suggestion: str | None) -> None:
    with pytest.raises(UserError) as err:
        config_from_data(data, overrides, environ={})
    assert err.value.field == path
    if suggestion:
        assert f"did you mean `{suggestion}`?" in (err.value.hint or "")
    else:
        assert "automodel config schema" in (err.value.hint or "")


def test_pydantic_errors_become_one_line_each() -> None:
    with pytest.raises(UserError) as err:
        config_from_data(BASE, ["peft.rank=0", "optimizer.lr=-1", "model.dtype=fp8"], environ={})
    text = err.value.render()
    assert "3 problems" in text
    for path in ("peft.rank:", "optimizer.lr:", "model.dtype:"):
        assert sum(line.strip().startswith(path) for line in text.splitlines()) == 1
    assert "Traceback" not in text


def test_missing_required_section_is_named() -> None:
    with pytest.raises(UserError) as err:
        config_from_data({k: v for k, v in BASE.items() if k != "schedule"}, [], environ={})
    assert err.value.field == "schedule"


def test_schema_paths_cover_nested_leaves() -> None:
    paths = set(schema_paths(TrainConfig))
    assert {"peft.rank", "data.instruction.answer_index_column", "data.validation.split", "seed"} <= paths


def test_secret_names_and_text_redaction() -> None:
    assert all(is_secret_name(n) for n in ("HF_TOKEN", "WANDB_API_KEY", "db_password", "AWS_SECRET_ACCESS_KEY"))
    assert not is_secret_name("HF_HOME")
    env = {"HF_TOKEN": "hf_abcdef", "HOME": "/home/u"}
    assert redact_text("a hf_abcdef b /home/u", env) == f"a {REDACTED} b /home/u"


def test_union_failures_report_the_informative_branch_without_type_tags() -> None:
    with pytest.raises(UserError) as info:  # all-linear | list of names: the list branch says what is wrong
        config_from_data(BASE, ["peft.target_modules=[q_proj, 3]"])
    assert info.value.field == "peft.target_modules.1" and "valid string" in info.value.message
    with pytest.raises(UserError) as info:
        config_from_data(BASE, ["peft.target_modules=5"])
    assert info.value.field == "peft.target_modules" and "[" not in info.value.render().split("\n")[0]
