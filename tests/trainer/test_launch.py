"""Launch: in-process for one process or inside a torchrun worker, torchrun re-exec otherwise (the
workers read the same resolved config, with no secret on the command line or in the file)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer import launch as launch_mod
from automodel.trainer.config import TrainConfig, config_from_data, load_config
from automodel.trainer.launch import Topology, in_worker, launch, torchrun_command

WORKER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def make(tmp_path: Path, *overrides: str) -> TrainConfig:
    data = {
        "model": {"name": "tiny", "init": "random"},
        "data": {"source": "train.jsonl", "format": "completion", "answer_only_loss": False,
                 "completion": {"text_column": "text"}},
        "schedule": {"global_batch_size": 4, "micro_batch_size": 1, "max_steps": 2},
        "output_dir": str(tmp_path / "out") + "/${HF_TOKEN}",
    }
    return config_from_data(data, list(overrides))


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WORKER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", "secret")


@pytest.fixture
def fake_recipe(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    calls: list[TrainConfig] = []
    module = types.ModuleType("automodel.trainer.recipe")
    module.run = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "automodel.trainer.recipe", module)
    return calls


def test_one_process_runs_in_process(tmp_path: Path, fake_recipe: list[TrainConfig],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not spawn"))
    cfg = make(tmp_path)
    assert launch(cfg, Topology()) == 0
    assert fake_recipe == [cfg]


def test_inside_a_worker_runs_in_process(tmp_path: Path, fake_recipe: list[TrainConfig],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not spawn"))
    for name, value in zip(WORKER_VARS, ("1", "2", "1"), strict=True):
        monkeypatch.setenv(name, value)
    assert in_worker()
    cfg = make(tmp_path)
    assert launch(cfg, Topology(nproc_per_node=2)) == 0  # the worker's own argv still says 2: no recursion
    assert fake_recipe == [cfg]


def test_many_processes_reexec_through_torchrun(tmp_path: Path, fake_recipe: list[TrainConfig],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class FakeTorchrun:
        pid = -1

        def __init__(self, cmd: list[str], env: dict[str, str], preexec_fn: Any = None) -> None:
            seen["cmd"] = cmd
            seen["env"] = env
            seen["preexec_fn"] = preexec_fn
            seen["text"] = Path(cmd[-1]).read_text()  # what the workers will read
            seen["cfg"] = load_config(cmd[-1])

        def wait(self) -> int:
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakeTorchrun)
    cfg = make(tmp_path, "peft.rank=4")
    assert launch(cfg, Topology(nproc_per_node=2)) == 3  # torchrun's exit code comes back
    assert fake_recipe == []
    from automodel.trainer.preempt import stop_with_parent

    assert seen["preexec_fn"] is stop_with_parent  # torchrun dies with the launcher (SIGTERM)
    cmd = seen["cmd"]
    assert cmd[1:-1] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                         "-m", "automodel.trainer.cli", "finetune", "llm", "-c"]
    assert not any("secret" in part for part in cmd)  # output_dir interpolates HF_TOKEN: not on the line
    assert "secret" not in seen["text"] and "${HF_TOKEN}" in seen["text"]
    assert seen["cfg"] == cfg  # the workers validate the very same config
    assert not Path(cmd[-1]).exists()  # removed once torchrun returned
    assert "OMP_NUM_THREADS" in seen["env"]  # each worker's thread count is set (worker_environment)


def test_multi_node_command() -> None:
    topo = Topology(nproc_per_node=8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29511)
    cmd = torchrun_command("llm", Path("/o/launch_config.yaml"), topo)
    assert cmd[3:8] == ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
                        "--master-port=29511"]
    assert topo.world_size == 16


def test_rendezvous_command() -> None:
    """c10d rendezvous (what `automodel slurm` uses): no node rank or master address, torchrun assigns them."""
    topo = Topology(nproc_per_node=4, nnodes=2, rdzv_endpoint="node001:29400", rdzv_id="job7")
    topo.check()
    cmd = torchrun_command("llm", Path("/o/c.yaml"), topo)
    assert cmd[3:8] == ["--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node001:29400",
                        "--rdzv-id=job7"]
    for bad in ("node001", "node001:x", ":29400", "node001:70000"):
        with pytest.raises(UserError) as err:
            Topology(nnodes=2, rdzv_endpoint=bad).check()
        assert err.value.field == "--rdzv-endpoint"
    with pytest.raises(UserError, match="not both"):
        Topology(nnodes=2, rdzv_endpoint="h:1", master_addr="h").check()


def test_indivisible_batch_fails_before_spawning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("must not spawn"))
    with pytest.raises(UserError) as err:
        launch(make(tmp_path), Topology(nproc_per_node=3))
    assert err.value.field == "schedule.global_batch_size"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("topo", "field"),
    [(Topology(nproc_per_node=0), "--nproc-per-node"), (Topology(nnodes=2, node_rank=2, master_addr="h"),
                                                         "--node-rank"),
     (Topology(nnodes=2), "--master-addr")],
)
def test_bad_topology(topo: Topology, field: str) -> None:
    with pytest.raises(UserError) as err:
        topo.check()
    assert err.value.field == field


def test_launch_module_is_torch_free() -> None:
    code = "import sys, automodel.trainer.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", launch_mod.__name__


ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "llm" / "tiny_offline.yaml"
SHORT_RUN = ["schedule.max_steps=3", "lr_schedule.warmup_steps=1", "schedule.val_every=null",
             "schedule.checkpoint_every=null", "schedule.log_every=1", "schedule.micro_batch_size=4", "logging.progress_bar=false",
             "checkpoint.export=none"]


def _finetune(output_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in WORKER_VARS}
    env.update(HF_TOKEN="secret", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "automodel.advisor.cli", "finetune", "llm", "-c", str(TINY), *extra,
           "output_dir=" + str(output_dir), *SHORT_RUN]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_two_processes_match_one(tmp_path: Path) -> None:
    """`--nproc-per-node 2` (gloo on CPU, FSDP2) gives the one-process losses for the same global batch
    (16 = 4 x 2 ranks x 2 accumulation steps vs 4 x 1 x 4)."""
    from automodel.trainer.metrics import read_metrics

    runs = {n: _finetune(tmp_path / f"np{n}", *(["--nproc-per-node", "2"] if n == 2 else [])) for n in (1, 2)}
    for n, proc in runs.items():
        assert proc.returncode == 0, f"{n} process(es):\n{proc.stderr[-3000:]}"
        assert "secret" not in proc.stdout + proc.stderr
    assert "torch.distributed.run --nproc-per-node=2" in runs[2].stderr
    one, two = (read_metrics(tmp_path / f"np{n}" / "metrics.jsonl") for n in (1, 2))
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3]  # rank 0 writes, once per step
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert one[-1]["loss"] < one[0]["loss"]


def test_workers_get_their_share_of_cores_and_torchrun_no_banner() -> None:
    from automodel.trainer.launch import worker_environment

    env, note = worker_environment({"PATH": "/bin"}, nproc_per_node=4, cpus=16)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "4"} and "4 CPU threads per process" in note
    assert worker_environment({}, nproc_per_node=8, cpus=2)[0]["OMP_NUM_THREADS"] == "1"
    env, note = worker_environment({"OMP_NUM_THREADS": "3"}, nproc_per_node=2, cpus=16)
    assert env["OMP_NUM_THREADS"] == "3" and "as set" in note
