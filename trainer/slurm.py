"""`automodel slurm`: the sbatch script that runs a config on N nodes x G GPUs.

One Slurm task per node runs `automodel finetune ... --nnodes N --nproc-per-node G --rdzv-endpoint
HEAD:PORT --rdzv-id JOB`, which starts G workers through torchrun; the nodes meet through torchrun's c10d
rendezvous hosted on the job's first node, so no node needs to know its rank. Every node's launcher
validates the same config (the YAML file plus the overrides written into the script).

Preemption: `--signal=B:USR1@S` has Slurm send SIGUSR1 to the batch shell S seconds before the time
limit; the shell passes it to `srun`, which passes it to each node's launcher, which passes it to its
workers as SIGTERM: they finish the step, checkpoint and exit 0 (trainer/preempt.py). The shell then
requeues the job (`--requeue`), and the requeued job resumes from that checkpoint (`checkpoint.resume:
auto`). A scheduler preemption sends SIGTERM to every process itself; the shell waits for the checkpoint.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from automodel.catalog.errors import UserError

_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")
SIGNAL_SECONDS = 300  # warning before the time limit: one step plus a checkpoint of a large sharded run


@dataclass(frozen=True)
class SlurmJob:
    """What the script runs and asks Slurm for."""

    task: str
    config: Path
    nodes: int
    gpus_per_node: int
    overrides: list[str] = field(default_factory=list)
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "automodel"
    workdir: Path = field(default_factory=Path.cwd)
    python: str = sys.executable

    def check(self) -> None:
        if self.nodes < 1:
            raise UserError("must be at least 1", field="--nodes")
        if self.gpus_per_node < 1:
            raise UserError("must be at least 1", field="--gpus-per-node")
        if self.time is not None and not _TIME.match(self.time):
            raise UserError(f"{self.time!r} is not a Slurm time limit", field="--time",
                            hint="use HH:MM:SS or D-HH:MM:SS, e.g. 24:00:00")


def render(job: SlurmJob) -> str:
    """The sbatch script (bash)."""
    job.check()
    q = shlex.quote
    # sbatch reads options up to the end of the line: the comments go on lines of their own
    headers = [f"--job-name={job.job_name}", f"--nodes={job.nodes}",
               "# one launcher per node; it starts the node's workers through torchrun",
               "--ntasks-per-node=1", f"--gpus-per-node={job.gpus_per_node}",
               f"# SIGUSR1 to this script {SIGNAL_SECONDS} s before the time limit: checkpoint, then requeue",
               f"--signal=B:USR1@{SIGNAL_SECONDS}",
               "# a requeued or preempted job starts again and resumes; it appends to the same log",
               "--requeue", "--open-mode=append", "--output=%x-%j.out"]
    if job.partition:
        headers.append(f"--partition={job.partition}")
    if job.account:
        headers.append(f"--account={job.account}")
    if job.time:
        headers.append(f"--time={job.time}")
    command = [job.python, "-m", "automodel.advisor.cli", "finetune", job.task, "-c", str(job.config.resolve()),
               "--nnodes", str(job.nodes), "--nproc-per-node", str(job.gpus_per_node),
               "--rdzv-endpoint", "__ENDPOINT__", "--rdzv-id", "__JOBID__", *job.overrides]
    line = " ".join(q(part) for part in command)
    line = line.replace("__ENDPOINT__", '"$HEAD_NODE:$RDZV_PORT"').replace("__JOBID__", '"$SLURM_JOB_ID"')
    return f"""#!/bin/bash
# Written by `automodel slurm`: {job.nodes} node(s) x {job.gpus_per_node} GPU(s), config {job.config}.
# Submit with `sbatch THIS_FILE`. Every node must see the config, the data and output_dir (a shared
# filesystem): each rank writes its own checkpoint shard there.
{chr(10).join(h if h.startswith("#") else "#SBATCH " + h for h in headers)}

set -uo pipefail

# NCCL (GPU collectives). The defaults suit most clusters; uncomment what yours needs:
# export NCCL_SOCKET_IFNAME=ib0,eth0   # interface(s) for NCCL's bootstrap and TCP fallback (`ip addr` on a node)
# export NCCL_IB_HCA=mlx5              # which InfiniBand adapters to use (`ibv_devices`)
# export NCCL_IB_DISABLE=1             # no InfiniBand/RoCE between the nodes: use TCP sockets
# export NCCL_DEBUG=INFO               # print the transport each connection uses (WARN: problems only)
# export NCCL_NET_GDR_LEVEL=PHB        # GPUDirect RDMA only where the NIC and GPU share a PCIe host bridge
# torch reports a failed collective instead of hanging on it, and waits 60 min for a slow one
# (the run sets that timeout itself: a big checkpoint or merged export can take minutes).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

cd {q(str(job.workdir.resolve()))}
# torchrun's c10d rendezvous runs on the job's first node; set RDZV_PORT to move it off 29500
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${{RDZV_PORT:-29500}}

srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\
  {line} &
SRUN_PID=$!

on_usr1() {{  # the time limit is near: checkpoint (srun passes the signal on to every node), then requeue
  echo "automodel: SIGUSR1 from Slurm: the run checkpoints and stops; requeueing job $SLURM_JOB_ID" >&2
  kill -USR1 "$SRUN_PID"
  wait "$SRUN_PID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}}
on_term() {{  # preempted: Slurm signalled every process itself; wait for the checkpoint
  wait "$SRUN_PID"
  exit $?
}}
trap on_usr1 USR1
trap on_term TERM
wait "$SRUN_PID"
exit $?
"""
