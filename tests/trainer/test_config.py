"""TrainConfig: YAML round trip, one test per validator (the error names its path), the Plan mapping,
column mappings, and secret redaction in dumps and repr."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automodel.catalog.errors import UserError
from automodel.catalog.memory.plan import Plan
from automodel.trainer.config import TrainConfig, config_from_data, dump_yaml, load_config
from automodel.trainer.data_formats import column_value

BASE = {
    "model": {"name": "tiny"},
    "data": {
        "source": "org/squadish",
        "format": "instruction",
        "instruction": {"prompt_template": "C: {context}\nQ: {question}\nA:", "answer_column": "answers.text.0"},
    },
    "schedule": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 20},
}


def make(*overrides: str, data: dict | None = None, environ: dict[str, str] | None = None) -> TrainConfig:
    return config_from_data(BASE if data is None else data, list(overrides), environ={} if environ is None else environ)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = make("peft.target_modules=[q_proj,v_proj]", "data.validation.split=validation", "optimizer.betas=[0.8,0.9]",
               "distributed.cpu_offload=true", "checkpoint.resume=never")
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path, environ={})
    assert again == cfg
    assert again.peft.target_modules == ("q_proj", "v_proj")
    assert dump_yaml(again) == dump_yaml(cfg)


def test_defaults_and_frozen() -> None:
    cfg = make()
    assert (cfg.task, cfg.peft.method, cfg.peft.rank, cfg.model.init, cfg.model.trust_remote_code) == (
        "llm", "lora", 16, "pretrained", False)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        cfg.peft.rank = 3  # type: ignore[misc]


INVALID = [
    # (overrides, data patch, the dotted path the message must name)
    (["data.format=completion"], None, "data.completion"),
    (["data.format=chat"], None, "data.instruction"),
    (["data.source=train.jsonl", "data.split=train"], None, "data.split"),
    (["data.source=train.jsonl", "data.subset=x"], None, "data.subset"),
    (["data.validation.split=train"], None, "data.validation"),
    (["data.validation.source=val.jsonl", "data.validation.split=test"], None, "data.validation.split"),
    (["data.instruction.answer_column=answers text"], None, "data.instruction.answer_column"),
    (["data.instruction.prompt_template=Q: {question!r}"], None, "data.instruction.prompt_template"),
    (["data.max_seq_len=4"], None, "data.max_seq_len"),
    ([], {"format": "completion", "instruction": None, "completion": {"text_column": "t"}}, "data.answer_only_loss"),
    ([], {"format": "completion", "instruction": None, "answer_only_loss": False,
          "completion": {"text_column": "t", "prompt_column": "p"}}, "data.completion.text_column"),
    ([], {"format": "completion", "instruction": None, "completion": {"prompt_column": "p"}},
     "data.completion.prompt_column"),
    ([], {"format": "completion", "instruction": None, "answer_only_loss": False,
          "completion": {"text_column": "t", "completion_index_column": "i"}}, "data.completion.completion_index_column"),
    (["distributed.strategy=none", "distributed.cpu_offload=true"], None, "distributed.cpu_offload"),
    (["schedule.global_batch_size=7"], None, "schedule.global_batch_size"),
    (["schedule.epochs=1"], None, "schedule.max_steps"),
    (["schedule.max_steps=null"], None, "schedule.max_steps"),
    (["optimizer.betas=[0.9, 1.0]"], None, "optimizer.betas"),
    (["logging.metrics_file=logs/m.jsonl"], None, "logging.metrics_file"),
    (["peft.method=none"], None, "checkpoint.export"),
    (["lr_schedule.warmup_steps=21"], None, "lr_schedule.warmup_steps"),
    (["lr_schedule.min_lr_ratio=2"], None, "lr_schedule.min_lr_ratio"),
    (["model.attn_implementation=flash"], None, "model.attn_implementation"),
    (["output_dir="], None, "output_dir"),  # '' would write checkpoints into the working directory
    (["peft.target_modules=[]"], None, "peft.target_modules"),  # peft would adapt nothing
    (['peft.target_modules=" , "'], None, "peft.target_modules"),
    (["peft.method=qlora", "checkpoint.export=merged"], None, "checkpoint.export"),  # no merge into a 4-bit base
    (["peft.method=qlora", "checkpoint.export=both"], None, "checkpoint.export"),
]


def test_target_modules_from_a_comma_list() -> None:
    assert make("peft.target_modules=q_proj, v_proj").peft.target_modules == ("q_proj", "v_proj")
    assert make("peft.target_modules=[k_proj, ' o_proj']").peft.target_modules == ("k_proj", "o_proj")


@pytest.mark.parametrize(("overrides", "data_patch", "path"), INVALID, ids=[case[2] for case in INVALID])
def test_every_rule_names_its_path(overrides: list[str], data_patch: dict | None, path: str) -> None:
    data = BASE if data_patch is None else {**BASE, "data": {**BASE["data"], **data_patch}}
    data = {**data, "data": {k: v for k, v in data["data"].items() if v is not None}}
    with pytest.raises(UserError) as err:
        make(*overrides, data=data)
    assert err.value.field == path, err.value.render()
    assert "Traceback" not in err.value.render()


def test_accumulation_steps_divides_by_world() -> None:
    schedule = make().schedule
    assert [schedule.accumulation_steps(w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(UserError) as err:
        schedule.accumulation_steps(3)
    assert err.value.field == "schedule.global_batch_size"


def test_to_plan_maps_every_field() -> None:
    cfg = make("peft.rank=8", "peft.target_modules=[q_proj]", "data.max_seq_len=512", "distributed.cpu_offload=true",
               "distributed.activation_checkpointing=false", "distributed.mixed_precision=fp32")
    assert cfg.to_plan(4) == Plan(mode="train", method="lora", lora_rank=8, lora_targets=("q_proj",),
                                  precision="fp32", optimizer="adamw", seq_len=512, micro_batch=2,
                                  grad_ckpt=False, gpus=4, cpu_offload=True)
    full = make("peft.method=none", "checkpoint.export=merged").to_plan()
    assert (full.method, full.gpus, full.lora_targets) == ("full", 1, "all-linear")


SQUAD_ROW = {"context": "Paris is in France.", "question": "Where is Paris?",
             "answers": {"text": ["France", "in France"], "answer_start": [12, 9]}}
HELLASWAG_ROW = {"ctx": "A man sits down and", "endings": ["flies.", "eats.", "sings.", "runs."], "label": "1"}


def test_qlora_maps_to_the_qlora_plan_and_runs_in_one_process() -> None:
    cfg = make("peft.method=qlora", "peft.rank=8")
    assert cfg.peft.adapters and cfg.checkpoint.export == "adapter"
    assert cfg.to_plan(1) == make("peft.rank=8").to_plan(1).model_copy(update={"method": "qlora"})
    cfg.peft.check_world_size(1)
    with pytest.raises(UserError) as err:
        cfg.peft.check_world_size(2)
    assert err.value.field == "peft.method" and "one process" in err.value.message
    make("peft.rank=8").peft.check_world_size(8)  # lora shards with FSDP2


def test_strategy_none_is_one_process() -> None:
    """validate, --dry-run and the run itself refuse it (the recipe checked it only once training began)."""
    cfg = make("distributed.strategy=none")
    cfg.distributed.check_world_size(1)
    with pytest.raises(UserError) as err:
        cfg.distributed.check_world_size(2)
    assert err.value.field == "distributed.strategy" and "fsdp2" in (err.value.hint or "")
    make().distributed.check_world_size(2)


def test_instruction_mapping_renders_squad() -> None:
    spec = make().data.format_spec()
    assert spec.prompt(SQUAD_ROW) == "C: Paris is in France.\nQ: Where is Paris?\nA:"
    assert spec.answer(SQUAD_ROW) == "France"
    assert column_value(SQUAD_ROW, "answers.answer_start.1") == 9


def test_completion_mapping_picks_the_indexed_ending() -> None:
    data = {**BASE["data"], "format": "completion", "instruction": None,
            "completion": {"prompt_column": "ctx", "completion_column": "endings", "completion_index_column": "label",
                           "separator": " "}}
    spec = make(data={**BASE, "data": {k: v for k, v in data.items() if v is not None}}).data.format_spec()
    assert spec.prompt(HELLASWAG_ROW) + spec.completion(HELLASWAG_ROW) == "A man sits down and eats."


def test_missing_column_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        make().data.format_spec().answer({"context": "c", "question": "q"})
    assert "answers" in err.value.message


def test_chat_defaults_to_messages_column() -> None:
    cfg = make("data.format=chat", data={**BASE, "data": {k: v for k, v in BASE["data"].items() if k != "instruction"}})
    assert cfg.data.format_spec().messages_column == "messages"


def test_secret_from_env_never_dumped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret")
    monkeypatch.setenv("RUN_NAME", "public")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "output_dir": "/runs/${RUN_NAME}/${HF_TOKEN}"}))
    cfg = load_config(path, ["model.name=${HF_TOKEN,none}-model"])
    assert cfg.output_dir == "/runs/public/secret"  # the run itself sees the resolved value
    text = dump_yaml(cfg)
    assert "secret" not in text and "secret" not in repr(cfg) and "secret" not in str(cfg)
    dumped = yaml.safe_load(text)
    assert dumped["output_dir"] == "/runs/${RUN_NAME}/${HF_TOKEN}"  # the unresolved template is kept
    assert dumped["model"]["name"] == "${HF_TOKEN,none}-model"
    again = tmp_path / "again.yaml"
    again.write_text(text)
    assert load_config(again) == cfg  # re-resolved from the same environment


def test_secret_literal_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k-12345")
    assert "k-12345" not in dump_yaml(make("output_dir=/runs/k-12345"))


@pytest.mark.parametrize(("content", "needle"), [("[1, 2]", "mapping"), ("model: [", "not valid YAML")])
def test_bad_files_are_user_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=needle):
        load_config(path)
    with pytest.raises(UserError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
            for sub in getattr(info.annotation, "__args__", (info.annotation,)):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    walk(sub)
    walk(TrainConfig)


def test_secret_inside_a_list_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODULE_KEY", "q_proj")
    cfg = make("peft.target_modules=[${MODULE_KEY}, v_proj]", environ={"MODULE_KEY": "q_proj"})
    assert cfg.peft.target_modules == ("q_proj", "v_proj")
    assert yaml.safe_load(dump_yaml(cfg))["peft"]["target_modules"] == ["${MODULE_KEY}", "v_proj"]
