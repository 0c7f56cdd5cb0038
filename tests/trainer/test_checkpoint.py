"""Checkpoints: atomic (a crash mid-write never becomes `latest`), pruned to keep_last, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer import checkpoint
from automodel.trainer.metrics import read_metrics


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(output_dir / "metrics.jsonl")]


def test_keep_last_and_latest_pointer(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.recipe import run

    run(tiny_config("schedule.max_steps=6", "schedule.checkpoint_every=2", "checkpoint.keep_last=2"))
    root = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000004", "step_00000006"]
    assert (root / "latest").read_text().strip() == "step_00000006"
    assert checkpoint.find_latest(tmp_path / "run") == root / "step_00000006"
    step = root / "step_00000006"
    assert {p.name for p in step.iterdir()} == {"dcp", "state.json", "rng_rank0.pt"}
    assert {p.name for p in (step / "dcp").iterdir()} == {".metadata", "__0_0.distcp"}
    # Starting over (resume=never) replaces the old run's checkpoints, including later steps.
    run(tiny_config("schedule.max_steps=2", "checkpoint.resume=never"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000002"]
    assert checkpoint.find_latest(tmp_path / "run") == root / "step_00000002"


def test_crash_during_write_keeps_previous_latest(tiny_config, tmp_path: Path, monkeypatch) -> None:
    """A full disk while step 4 is written: exit 2 (a UserError naming output_dir and the checkpoint that
    stays latest), the half-written step removed, and the rerun resumes from step 2."""
    import errno

    import torch

    from automodel.catalog.errors import UserError
    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=6", "schedule.checkpoint_every=2")
    run(tiny_config(*args, output_dir=tmp_path / "straight"))
    real_save = torch.save

    def crash_after_step_4_shards(obj, path, *a, **k):
        if str(path).endswith("step_00000004/rng_rank0.pt"):  # the shards are written, the rest is not
            assert (Path(path).parent / "dcp/.metadata").is_file()
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", crash_after_step_4_shards)
    with pytest.raises(UserError) as err:
        run(tiny_config(*args, output_dir=tmp_path / "crashed"))
    root = tmp_path / "crashed/checkpoints"
    assert err.value.field == "output_dir" and "no space left" in err.value.message
    assert f"{root / 'step_00000002'} is still the latest checkpoint" in err.value.message
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert not (root / "step_00000004").exists() and not list(root.glob(".tmp-*"))
    monkeypatch.setattr(torch, "save", real_save)
    result = run(tiny_config(*args, output_dir=tmp_path / "crashed"))
    assert result.resumed_from == 2
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


def _quantised_like_model():
    """A frozen linear whose state dict carries bitsandbytes-style quantisation keys (`weight.absmax`,
    `weight.quant_state.*`) that are no attributes, beside a trainable linear and a persistent buffer."""
    import torch
    from torch import nn

    class FourBitLike(nn.Linear):
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination[prefix + "weight.absmax"] = torch.ones(2)
            destination[prefix + "weight.quant_state.bitsandbytes__nf4"] = torch.zeros(3, dtype=torch.uint8)

    torch.manual_seed(0)
    model = nn.Sequential(FourBitLike(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model.register_buffer("scale", torch.full((2,), 3.0))
    return model


def test_one_process_state_skips_frozen_quantisation_keys() -> None:
    """A QLoRA base's state dict has keys torch's state-dict API cannot resolve (before bitsandbytes PR #1866 the
    first checkpoint crashed); one process reads the model directly."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = _quantised_like_model()
    with pytest.raises(AttributeError, match="absmax"):  # what the torch path does with such a model
        get_model_state_dict(model, options=checkpoint._full_options(trainable_only=True, to_cpu=True))
    state = checkpoint.model_state(model, trainable_only=True)
    assert sorted(state) == ["1.bias", "1.weight", "scale"]
    assert torch.equal(state["1.weight"], model[1].weight) and not state["1.weight"].requires_grad
    full = checkpoint.model_state(model, trainable_only=False)
    assert "0.weight" in full and "0.weight.absmax" in full


def test_one_process_state_matches_torch_api() -> None:
    """Without quantisation keys the direct read equals torch's full, CPU state dict (same files as before)."""
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model.register_buffer("scale", torch.full((2,), 3.0))
    for trainable_only in (True, False):
        ours = checkpoint.model_state(model, trainable_only=trainable_only)
        ref = get_model_state_dict(model, options=checkpoint._full_options(trainable_only=trainable_only,
                                                                             to_cpu=True))
        assert list(ours) == list(ref)
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    state = checkpoint.model_state(tied, trainable_only=False)
    assert state["0.weight"] is state["1.weight"] and not torch.equal(state["0.bias"], state["1.bias"])


def test_old_layout_is_refused(tiny_config, tmp_path: Path) -> None:
    """A checkpoint without the sharded part (an older version's model.pt layout) stops with the fix named."""
    from automodel.trainer.recipe import run

    run(tiny_config("schedule.max_steps=2"))
    step = tmp_path / "run/checkpoints/step_00000002"
    import shutil

    shutil.rmtree(step / "dcp")
    with pytest.raises(UserError, match="no sharded checkpoint") as err:
        run(tiny_config("schedule.max_steps=3"))
    assert err.value.field == "checkpoint.resume"


def test_rng_state_round_trips_numpy_too() -> None:
    """Wav2Vec2's SpecAugment masks come from numpy's global generator: resume restores it with the others."""
    import random

    import numpy as np
    import torch

    from automodel.trainer.checkpoint import rng_state, set_rng_state

    np.random.seed(3)
    state = rng_state()
    first = (np.random.rand(3).tolist(), torch.rand(2).tolist(), random.random())
    set_rng_state(state)
    assert (np.random.rand(3).tolist(), torch.rand(2).tolist(), random.random()) == first


def _slow_writes(monkeypatch, seconds: float) -> None:
    """Every DCP file write first waits `seconds`: the loop runs on while an async checkpoint is written."""
    import time

    from torch.distributed.checkpoint import filesystem

    write = filesystem._FileSystemWriter.write_data

    def slow(self, plan, planner):  # noqa: ANN001, ANN202
        time.sleep(seconds)
        return write(self, plan, planner)

    monkeypatch.setattr(filesystem._FileSystemWriter, "write_data", slow)


def test_async_save_holds_each_steps_weights_and_resumes_exactly(tiny_config, tmp_path: Path, monkeypatch) -> None:
    """checkpoint.async_save: while a slowed write runs in the background the loop trains on, yet every
    checkpoint holds its own step's weights (the shard was staged on the host first), `latest` moves
    only once a write has finished, and a rerun from the step-4 checkpoint logs the same losses."""
    import torch

    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=6", "schedule.checkpoint_every=2", "checkpoint.keep_last=3")
    run(tiny_config(*args, output_dir=tmp_path / "sync"))
    _slow_writes(monkeypatch, 1.0)
    seen: list[str | None] = []
    poll = checkpoint.Checkpointer.poll

    def watch(self):  # noqa: ANN001, ANN202
        latest = checkpoint.find_latest(self.output_dir)
        seen.append(None if latest is None else latest.name)
        return poll(self)

    monkeypatch.setattr(checkpoint.Checkpointer, "poll", watch)
    run(tiny_config(*args, "checkpoint.async_save=true", output_dir=tmp_path / "async"))
    assert _losses(tmp_path / "async") == _losses(tmp_path / "sync")
    # steps 3 and 4 started while the step-2 write was still sleeping: nothing was `latest` yet; later
    # `latest` only ever named a checkpoint whose write had finished
    assert seen[:2] == [None, None] and set(seen) <= {None, "step_00000002", "step_00000004"}
    for step in ("step_00000002", "step_00000004", "step_00000006"):
        a = checkpoint.read_weights(tmp_path / "sync/checkpoints" / step)
        b = checkpoint.read_weights(tmp_path / "async/checkpoints" / step)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    assert checkpoint.find_latest(tmp_path / "async").name == "step_00000006"  # drained before the run ended
    monkeypatch.undo()
    run(tiny_config(*args, "checkpoint.async_save=true",
                    f"checkpoint.resume={tmp_path / 'async/checkpoints/step_00000004'}", output_dir=tmp_path / "async"))
    assert _losses(tmp_path / "async") == _losses(tmp_path / "sync")
