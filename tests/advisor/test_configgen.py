"""Recommendation -> TrainConfig -> YAML: validated by the trainer's schema, the same Plan back, dry-run ok."""

from __future__ import annotations

from dataclasses import replace

import pytest

from automodel.advisor.cli import main
from automodel.advisor.configgen import (
    PLACEHOLDER_DATASET,
    build_config,
    global_batch,
    write_config,
)
from automodel.advisor.profile import Hardware, Profile, Requirements, StrategyPreference, Task
from automodel.advisor.rank import accumulation_steps, recommend
from automodel.catalog.errors import UserError
from automodel.catalog.memory.plan import Plan
from automodel.trainer.config import load_config

GIB = 2**30


def picks(task: str, mem: int, method: str = "auto", gpus: int = 1, **req):
    profile = Profile(task=Task(modality=task), hardware=Hardware(memory_bytes=mem * GIB, gpus_per_node=gpus),
                      requirements=Requirements(**req), strategy=StrategyPreference(method=method))
    return recommend(profile).recommendations


@pytest.mark.parametrize(("task", "mem", "method", "gpus"),
                         [("llm", 24, "lora", 1), ("llm", 80, "full", 8), ("asr", 16, "auto", 1),
                          ("llm", 12, "qlora", 1)])
def test_config_gives_the_recommendation_s_plan_back(task, mem, method, gpus) -> None:
    for rec in picks(task, mem, method, gpus)[:3]:  # the trainer runs every plan rank makes
        cfg = build_config(rec)
        assert cfg.task == task and cfg.model.name == rec.model.name
        assert cfg.to_plan(rec.plan.gpus) == rec.plan


def test_vlm_config_gives_the_plan_back_images_included() -> None:
    rec = picks("vlm", 24, "lora")[0]
    back = build_config(rec).to_plan(rec.plan.gpus)
    assert rec.plan.images == 1 and back == rec.plan


def test_full_fine_tuning_config() -> None:
    rec = next(r for r in picks("llm", 80, "full", gpus=8) if r.plan.gpus > 1)
    cfg = build_config(rec)
    assert cfg.peft.method == "none" and cfg.checkpoint.export == "merged" and cfg.optimizer.lr == 2e-5
    assert cfg.schedule.global_batch_size % (cfg.schedule.micro_batch_size * rec.plan.gpus) == 0


@pytest.mark.parametrize(("micro", "world", "expected"), [(1, 1, 8), (3, 1, 9), (2, 8, 16), (1, 16, 16), (4, 2, 8)])
def test_global_batch_is_what_the_plan_was_estimated_with(micro, world, expected) -> None:
    plan = Plan(micro_batch=micro, gpus=world, grad_accum=accumulation_steps(micro, world))
    assert global_batch(plan) == expected


def test_yaml_round_trip_with_placeholder_and_with_a_real_dataset(tmp_path) -> None:
    rec = picks("llm", 24, "lora")[0]
    path = write_config(rec, tmp_path / "a.yaml")
    text = path.read_text()
    assert text.startswith("# Written by `automodel recommend`") and "FILL IN data.source" in text
    assert load_config(path) == build_config(rec) and load_config(path).data.source == PLACEHOLDER_DATASET
    real = write_config(rec, tmp_path / "b.yaml", dataset="rajpurkar/squad")
    assert "FILL IN" not in real.read_text() and load_config(real).data.source == "rajpurkar/squad"


def test_qlora_on_one_gpu_is_written_and_on_several_refused_with_the_flag() -> None:
    rec = picks("llm", 12, "qlora")[0]
    assert rec.plan.gpus == 1
    cfg = build_config(rec)
    assert cfg.peft.method == "qlora" and cfg.checkpoint.export == "adapter" and cfg.optimizer.lr == 2e-4
    wide = replace(rec, plan=rec.plan.model_copy(update={"gpus": 2, "grad_accum": 4}))
    with pytest.raises(UserError) as err:
        build_config(wide)
    assert err.value.field == "--write-config" and "one process" in err.value.message
    assert "--method lora" in (err.value.hint or "")


def test_unwritable_path_is_a_user_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError) as err:
        write_config(picks("llm", 24, "lora")[0], blocker / "run.yaml")
    assert err.value.field == "--write-config"


def test_finetune_dry_run_accepts_the_written_config(tmp_path, capsys) -> None:
    rec = picks("llm", 24, "lora")[0]
    path = write_config(rec, tmp_path / "run.yaml")
    # as written, the placeholder stops it (naming data.source); with the user's data it runs
    assert main(["finetune", "llm", "-c", str(path), "--dry-run"]) == 2
    assert "error: data.source: `REPLACE_ME/your-dataset` is a placeholder" in capsys.readouterr().err
    assert main(["finetune", "llm", "-c", str(path), "--dry-run", "data.source=someorg/chats"]) == 0
    out = capsys.readouterr().out
    assert f"{rec.estimate.peak_reserved / GIB:.2f}" in out  # the dry-run estimate is the recommendation one


def test_asr_config_has_an_audio_data_section_that_gives_the_plan_back() -> None:
    """An ASR pick's config reads audio rows and keeps clips within the seconds the estimate assumed."""
    for rec in picks("asr", 24, "auto")[:3]:
        cfg = build_config(rec)
        assert cfg.data.format == "audio" and cfg.data.max_seconds == rec.plan.audio_seconds
        assert cfg.to_plan(rec.plan.gpus) == rec.plan
        longer = rec.plan.model_copy(update={"audio_seconds": 12.0})
        assert build_config(replace(rec, plan=longer)).to_plan(rec.plan.gpus).audio_seconds == 12.0


def test_written_vlm_config_trains_once_the_data_source_is_replaced(tmp_path, capsys) -> None:
    """The VLM pick's config has a VLM data section: with the placeholder replaced by chat rows with images
    (and, offline, the pick's model swapped for a tiny random one) `finetune vlm` runs it as written."""
    from tests.trainer.vlm_assets import make_assets, model_dir

    path = write_config(picks("vlm", 24, "lora")[0], tmp_path / "v.yaml")
    rows = make_assets.write_rows(tmp_path / "data", "train", 8, 0)
    assert main(["finetune", "vlm", "-c", str(path), f"data.source={rows}", f"model.name={model_dir(tmp_path, 'gemma')}",
                 "model.init=random", "schedule.epochs=null", "schedule.max_steps=1", "schedule.global_batch_size=2",
                 "schedule.micro_batch_size=2", "checkpoint.export=none", "logging.progress_bar=false",
                 f"output_dir={tmp_path / 'out'}"]) == 0
    assert "run summary" in capsys.readouterr().err
