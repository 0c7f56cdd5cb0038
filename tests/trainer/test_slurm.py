"""`automodel slurm`: the sbatch script passes `bash -n`, and under stub `srun`/`scontrol` that start two
"nodes" on this machine it trains the tiny example through torchrun's c10d rendezvous; SIGUSR1 to the batch
shell (Slurm's `--signal=B:USR1@...`) checkpoints every rank, requeues the job and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer.slurm import SlurmJob, render

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples/llm/tiny_offline.yaml"

SRUN = """#!/bin/bash
# stub srun: the command once per node (SLURM_NNODES), all on this machine; signals go on to every copy
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
  SLURM_NODEID=$i SLURM_PROCID=$i "$@" > "$STUB_DIR/node$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
  while true; do
    wait "$p"; s=$?
    kill -0 "$p" 2>/dev/null || break  # still running: the wait was cut short by a signal
  done
  [ "$s" -ne 0 ] && rc=$s
done
exit $rc
"""

SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then
  for ((i = 0; i < SLURM_NNODES; i++)); do echo localhost; done
else
  echo "$*" >> "$STUB_DIR/scontrol.log"
fi
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_script_trains_on_two_stub_nodes_and_requeues_on_usr1(tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = tmp_path / "job.sbatch"
    overrides = [f"output_dir={out}", "schedule.max_steps=300", "schedule.log_every=1", "schedule.val_every=null",
                 "schedule.checkpoint_every=null", "logging.progress_bar=false", "checkpoint.export=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-m", "automodel.advisor.cli", "slurm", "-c", str(TINY), "--nodes", "2",
                           "--gpus-per-node", "1", "--partition", "gpu", "--time", "01:00:00", "-o", str(job),
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    text = job.read_text()
    assert subprocess.run(["bash", "-n", str(job)], check=False).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@"):
        assert line in text
    assert "NCCL_SOCKET_IFNAME" in text and "--rdzv-endpoint" in text

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    env.update(PATH=f"{stubs}:{env['PATH']}", STUB_DIR=str(tmp_path), SLURM_NNODES="2", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node[1-2]", RDZV_PORT=str(_free_port()))
    proc = subprocess.Popen(["bash", str(job)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()):
        logs = "".join(p.read_text() for p in tmp_path.glob("node*.log"))
        assert proc.poll() is None and time.monotonic() < deadline, logs[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("node*.log")))
    assert proc.returncode == 0, err + logs[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert "--rdzv-backend=c10d" in logs and "--nnodes=2" in logs
    latest = (out / "checkpoints/latest").read_text().strip()
    state = json.loads((out / "checkpoints" / latest / "state.json").read_text())
    assert state["world"] == 2 and 1 <= state["step"] < 300
    assert {p.name for p in (out / "checkpoints" / latest / "dcp").iterdir()} >= {"__0_0.distcp", "__1_0.distcp"}
    assert f"stopped by SIGTERM after step {state['step']} of 300" in logs


@pytest.mark.parametrize(("kwargs", "field"), [({"nodes": 0}, "--nodes"), ({"gpus_per_node": 0}, "--gpus-per-node"),
                                               ({"time": "1h"}, "--time")])
def test_bad_job_is_a_user_error(kwargs: dict, field: str) -> None:
    job = SlurmJob(**{"task": "llm", "config": TINY, "nodes": 2, "gpus_per_node": 8, **kwargs})
    with pytest.raises(UserError) as err:
        render(job)
    assert err.value.field == field
