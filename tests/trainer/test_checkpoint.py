"""Checkpoints: atomic (a crash mid-write never becomes `latest`), pruned to keep_last, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer import checkpoint
from automodel.trainer.metrics import read_metrics


def test_keep_last_and_latest_pointer(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.recipe import run

    run(tiny_config("schedule.max_steps=6", "schedule.checkpoint_every=2", "checkpoint.keep_last=2"))
    root = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000004", "step_00000006"]
    assert (root / "latest").read_text().strip() == "step_00000006"
    assert checkpoint.find_latest(tmp_path / "run") == root / "step_00000006"
    step = root / "step_00000006"
    assert {p.name for p in step.iterdir()} == {"model.pt", "optimizer.pt", "state.json", "rng_rank0.pt"}
    # Starting over (resume=never) replaces the old run's checkpoints, including later steps.
    run(tiny_config("schedule.max_steps=2", "checkpoint.resume=never"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000002"]
    assert checkpoint.find_latest(tmp_path / "run") == root / "step_00000002"


def test_crash_during_write_keeps_previous_latest(tiny_config, tmp_path: Path, monkeypatch) -> None:
    import torch

    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=6", "schedule.checkpoint_every=2")
    run(tiny_config(*args, output_dir=tmp_path / "straight"))
    real_save = torch.save

    def crash_on_step_4_optimizer(obj, path, *a, **k):
        if str(path).endswith("step_00000004/optimizer.pt"):
            real_save(obj, path, *a, **k)
            Path(path).write_bytes(Path(path).read_bytes()[:100])  # half-written file, then the crash
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", crash_on_step_4_optimizer)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_config(*args, output_dir=tmp_path / "crashed"))
    root = tmp_path / "crashed/checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert not (root / "step_00000004").exists() and (root / ".tmp-step_00000004").exists()
    monkeypatch.setattr(torch, "save", real_save)
    result = run(tiny_config(*args, output_dir=tmp_path / "crashed"))
    assert result.resumed_from == 2
    assert not list(root.glob(".tmp-*"))  # the leftover is cleaned by the next save
    losses = [r["loss"] for r in read_metrics(tmp_path / "crashed/metrics.jsonl")]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "straight/metrics.jsonl")]


def test_resume_settings(tmp_path: Path) -> None:
    assert checkpoint.resolve_resume("auto", tmp_path) is None
    assert checkpoint.resolve_resume("never", tmp_path) is None
    with pytest.raises(UserError) as err:
        checkpoint.resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert err.value.field == "checkpoint.resume"
    step = tmp_path / "checkpoints/step_00000003"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")
    assert checkpoint.resolve_resume("auto", tmp_path) is None  # no `latest` yet: not complete
    (tmp_path / "checkpoints/latest").write_text("step_00000003\n")
    assert checkpoint.resolve_resume("auto", tmp_path) == step
    assert checkpoint.resolve_resume(str(step), tmp_path / "elsewhere") == step
    assert checkpoint.resolve_resume(str(tmp_path), tmp_path / "elsewhere") == step
    assert checkpoint.resolve_resume("never", tmp_path) is None
