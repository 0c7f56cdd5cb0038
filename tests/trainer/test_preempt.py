"""Preemption: SIGUSR1/SIGTERM end a run after the current step with a checkpoint (exit 0); the rerun
resumes exactly. Ctrl-C is left alone (KeyboardInterrupt, exit 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from automodel.trainer import checkpoint, preempt
from automodel.trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def test_sigusr1_mid_run_checkpoints_that_step_and_the_rerun_matches(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    # log_every 4: the stop falls between log lines, so the resumed run must carry the unlogged window on
    args = ("schedule.max_steps=24", "schedule.log_every=4", "schedule.checkpoint_every=null")
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(dump_yaml(tiny_config(*args, output_dir=tmp_path / "stopped")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "automodel.advisor.cli", "finetune", "llm", "-c", str(config_file)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_file = tmp_path / "stopped/metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics_file.is_file() and metrics_file.read_text().strip()):  # the loop is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - sent < 15  # one step and a checkpoint (seconds on a loaded 2-core box)
    latest = checkpoint.find_latest(tmp_path / "stopped")
    assert latest is not None
    stopped_at = int(latest.name.removeprefix("step_"))
    assert 4 <= stopped_at < 24
    assert f"stopped by SIGUSR1 after step {stopped_at} of 24" in err and "run the same command again" in err
    assert not (tmp_path / "stopped/summary.json").exists()  # no export or summary for a stopped run

    resumed = run(tiny_config(*args, output_dir=tmp_path / "stopped"))
    straight = run(tiny_config(*args, output_dir=tmp_path / "straight"))
    assert resumed.resumed_from == stopped_at and not resumed.preempted
    assert resumed.final_loss == straight.final_loss  # exactly
    ours = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(tmp_path / "stopped/metrics.jsonl")]
    theirs = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(tmp_path / "straight/metrics.jsonl")]
    assert ours == theirs


def test_stop_request_handles_term_and_usr1_but_not_ctrl_c() -> None:
    before = {sig: signal.getsignal(sig) for sig in (*preempt.SIGNALS, signal.SIGINT)}
    with preempt.StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # Ctrl-C still raises KeyboardInterrupt
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested and stop.name() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)  # the first signal is the one reported
        time.sleep(0.01)
        assert stop.name() == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _alive_with(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_killing_the_launcher_stops_the_workers_with_a_checkpoint(tiny_config, tmp_path: Path) -> None:
    """kill -9 to `automodel finetune --nproc-per-node 2` and its torchrun (their process group): the workers,
    in sessions of their own, are not left training; each gets SIGTERM from Linux as its parent dies
    (preempt.stop_with_parent), stops after its step with a checkpoint, and the rerun resumes from it."""
    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=5000", "schedule.log_every=1", "schedule.checkpoint_every=null",
            "schedule.global_batch_size=4", "schedule.micro_batch_size=2")
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(dump_yaml(tiny_config(*args, output_dir=tmp_path / "run")))
    log = tmp_path / "launcher.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "automodel.advisor.cli", "finetune", "llm", "-c",
                                 str(config_file), "--nproc-per-node", "2"], cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=sink, stderr=sink,
                                start_new_session=True)
    metrics_file = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    launch_file = next(w for w in log.read_text().split() if "automodel-launch-" in w)  # what the workers run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _alive_with(launch_file):
        assert time.monotonic() < deadline, f"workers still running: {_alive_with(launch_file)}"
        time.sleep(0.1)
    latest = checkpoint.find_latest(tmp_path / "run")
    assert latest is not None, log.read_text()[-3000:]
    stopped_at = int(latest.name.removeprefix("step_"))
    assert 2 <= stopped_at < 5000 and f"stopped by SIGTERM after step {stopped_at}" in log.read_text()
    resumed = run(tiny_config(*args[1:], f"schedule.max_steps={stopped_at + 1}", output_dir=tmp_path / "run"))
    assert resumed.resumed_from == stopped_at and resumed.steps == stopped_at + 1
