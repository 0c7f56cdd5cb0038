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
