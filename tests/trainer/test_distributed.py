"""Two gloo processes with FSDP2 train exactly like one process with gradient accumulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
# The engine reduce-scatters every micro batch, so accumulated gradients stay sharded (trainer/recipe.py):
# a worker that sees gradient sync turned off fails the run.
WORKER = """
import sys
from torch.distributed.fsdp import FSDPModule
from automodel.trainer.config import load_config
from automodel.trainer.recipe import run

_set_sync = FSDPModule.set_requires_gradient_sync
def _always_sync(self, requires_gradient_sync, *args, **kwargs):
    assert requires_gradient_sync, "gradient sync turned off: accumulated gradients would stay unsharded"
    return _set_sync(self, requires_gradient_sync, *args, **kwargs)
FSDPModule.set_requires_gradient_sync = _always_sync
run(load_config(sys.argv[1]))
"""


def _run_torchrun(config_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(config_file)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)


def test_two_process_fsdp2_matches_one_process(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=4", "schedule.global_batch_size=8", "schedule.micro_batch_size=2",
            "schedule.val_every=2", "schedule.checkpoint_every=2", "checkpoint.export=both",
            "distributed.activation_checkpointing=true")
    run(tiny_config(*args, output_dir=tmp_path / "one"))  # 1 process: 4 micro batches per step
    config_file = tmp_path / "two.yaml"
    config_file.write_text(dump_yaml(tiny_config(*args, output_dir=tmp_path / "two")))
    proc = _run_torchrun(config_file, tmp_path)  # 2 processes: 2 micro batches each per step
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, two = read_metrics(tmp_path / "one/metrics.jsonl"), read_metrics(tmp_path / "two/metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"] and a["target_tokens"] == b["target_tokens"]
        for key in ("loss", "grad_norm", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    # The gathered checkpoint and exports do not depend on the world size.
    import torch

    from automodel.trainer.checkpoint import read_weights

    w1 = read_weights(tmp_path / "one/checkpoints/step_00000004")
    w2 = read_weights(tmp_path / "two/checkpoints/step_00000004")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "two/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "two/merged/model.safetensors").is_file()
    assert {p.name for p in (tmp_path / "two/checkpoints/step_00000004").iterdir()} >= {"rng_rank0.pt",
                                                                                          "rng_rank1.pt"}


# Runs several configs one after the other in the same two workers (one torchrun start, one process group).
SEQUENTIAL_WORKER = """
import sys
import torch.distributed
from automodel.trainer import distributed
from automodel.trainer.config import load_config
from automodel.trainer.recipe import run

distributed.teardown = lambda d: None
for path in sys.argv[1:]:
    run(load_config(path))
torch.distributed.destroy_process_group()
"""


def _optimizer_bytes_per_file(checkpoint_dir: Path) -> tuple[dict[str, int], dict[str, set[str]]]:
    """From a DCP index: optimizer bytes stored in each file, and the files holding each tensor's chunks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(checkpoint_dir / "dcp")).read_metadata()
    per_file: dict[str, int] = {}
    files_of: dict[str, set[str]] = {}
    for key, meta in metadata.state_dict_metadata.items():
        if not key.startswith("optimizer.state.") or not isinstance(meta, TensorStorageMetadata):
            continue
        for chunk in meta.chunks:
            info = metadata.storage_data[MetadataIndex(key, chunk.offsets)]
            per_file[info.relative_path] = per_file.get(info.relative_path, 0) + info.length
            files_of.setdefault(key, set()).add(info.relative_path)
    return per_file, files_of


def test_resume_across_world_sizes_with_a_longer_schedule(tiny_config, tmp_path: Path) -> None:
    """Sharded (DCP) checkpoints: a 2-process run's step-4 checkpoint resumes in 1 process, a 1-process one in 2
    processes, each to step 6 of a run planned for 4, and both reach the uninterrupted 1-process run's loss at
    step 6 (constant LR, dropout 0). Each rank wrote its own shard (also with async saves): no file holds the
    whole optimizer state."""
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    args = ("schedule.global_batch_size=8", "schedule.micro_batch_size=2", "lr_schedule.kind=constant",
            "checkpoint.keep_last=1")
    ref = tiny_config(*args, "schedule.max_steps=6", output_dir=tmp_path / "ref")
    run(ref)
    run(tiny_config(*args, "schedule.max_steps=4", output_dir=tmp_path / "one_two"))  # 1 process to 4
    files = []
    # 2 processes: a run to 4 (its checkpoints written in the background: checkpoint.async_save over the
    # second gloo group), then 1 -> 2 to 6 (written in the loop)
    for name, steps, extra in (("two_one", 4, ["checkpoint.async_save=true"]), ("one_two", 6, [])):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(dump_yaml(tiny_config(*args, *extra, f"schedule.max_steps={steps}",
                                                   output_dir=tmp_path / name)))
    script = tmp_path / "worker.py"
    script.write_text(SEQUENTIAL_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout

    step4 = tmp_path / "two_one/checkpoints/step_00000004"
    assert json.loads((step4 / "state.json").read_text())["world"] == 2
    assert {p.name for p in (step4 / "dcp").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    per_file, files_of = _optimizer_bytes_per_file(step4)
    total = sum(per_file.values())
    assert set(per_file) == {"__0_0.distcp", "__1_0.distcp"} and total > 0
    assert all(size < 0.75 * total for size in per_file.values()), per_file  # each rank wrote about half
    moments = [key for key in files_of if key.endswith(".exp_avg")]
    assert moments and all(len(files_of[key]) == 2 for key in moments)  # every moment is split over both

    assert run(tiny_config(*args, "schedule.max_steps=6", output_dir=tmp_path / "two_one")).resumed_from == 4
    expected = read_metrics(tmp_path / "ref/metrics.jsonl")
    for name in ("two_one", "one_two"):
        resumed = read_metrics(tmp_path / f"{name}/metrics.jsonl")
        assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
        for a, b in zip(expected, resumed, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (name, a["step"])


def _fake_cuda(monkeypatch, gpus: int, calls: list) -> None:
    """CUDA with `gpus` devices and a recording nccl process group, for setup()'s GPU branch on a CPU box."""
    import torch
    import torch.distributed as dist
    import torch.distributed.device_mesh as device_mesh

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 5)
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda kind, shape: calls.append(("mesh", kind, shape)))


def test_setup_binds_the_local_rank_gpu_before_nccl(monkeypatch) -> None:
    """Second node of 2 x 4 GPUs: RANK 5 drives its own GPU 1 (LOCAL_RANK), bound before nccl starts; the
    collective timeout outlasts rank 0 writing a big checkpoint (nccl's default is 10 minutes)."""
    from datetime import timedelta

    import torch

    from automodel.trainer import distributed

    calls: list = []
    _fake_cuda(monkeypatch, 4, calls)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = distributed.setup()
    gpu = torch.device("cuda", 1)
    assert (d.rank, d.world, d.device) == (5, 8, gpu)
    assert calls == [("set_device", gpu), ("init", {"backend": "nccl", "device_id": gpu, "timeout": timedelta(minutes=60)}), ("mesh", "cuda", (8,))]


def test_setup_rejects_more_processes_than_gpus(monkeypatch) -> None:
    from automodel.catalog.errors import UserError
    from automodel.trainer import distributed

    calls: list = []
    _fake_cuda(monkeypatch, 2, calls)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(UserError, match="LOCAL_RANK=3 needs GPU 3, but this process sees 2") as err:
        distributed.setup()
    assert err.value.field == "--nproc-per-node" and calls == []


def test_cpu_offload_adds_gloo_beside_nccl(tiny_config, monkeypatch) -> None:
    """FSDP2 CPU offload keeps shards and gradients on the host: clip_grad_norm_ all-reduces CPU tensors,
    which nccl alone rejects ("No backend type associated with device type cpu")."""
    from automodel.trainer import distributed, recipe

    calls: list = []
    _fake_cuda(monkeypatch, 2, calls)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.setup(cpu_collectives=True)
    assert calls[1][1]["backend"] == "cuda:nccl,cpu:gloo"

    asked = []

    def stop(**kwargs):
        asked.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "setup", stop)
    for offload in ("true", "false"):
        with pytest.raises(KeyboardInterrupt):
            recipe.run(tiny_config(f"distributed.cpu_offload={offload}"))
    assert asked == [{"cpu_collectives": True}, {"cpu_collectives": False}]


def test_the_engine_tests_see_no_gpu() -> None:
    """tests/trainer/conftest.py: the pinned CPU figures hold on a GPU machine too."""
    import os

    import torch

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
