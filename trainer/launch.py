"""Where a validated run executes: in this process, or in N processes through `torch.distributed.run`.

- one process and one node -> `automodel.trainer.recipe.run(cfg)` here;
- already inside a torchrun worker (RANK, WORLD_SIZE and LOCAL_RANK set) -> here as well;
- otherwise -> write the resolved config to a private temporary file (removed when torchrun returns)
  and re-exec `python -m torch.distributed.run ... -m automodel.trainer.cli finetune TASK -c that file`,
  so every worker validates exactly the config the launcher validated. Overrides are already baked into
  the file and secrets stay `${NAME}` in it: the workers inherit the environment and resolve them
  themselves, so no secret is ever on a command line (not even inside a path: the file does not live
  in output_dir, which may interpolate one) or in the file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from automodel.catalog.errors import UserError
from automodel.trainer.config import TrainConfig, dump_yaml

WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Topology:
    """How many processes on how many nodes, and how they meet (torchrun's flags)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None  # HOST:PORT of torchrun's c10d rendezvous (any node may start first)
    rdzv_id: str | None = None  # the job's name at the rendezvous: the same on every node, new for every job

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> None:
        if self.nproc_per_node < 1:
            raise UserError("must be at least 1", field="--nproc-per-node")
        if self.nnodes < 1:
            raise UserError("must be at least 1", field="--nnodes")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"{self.node_rank} is not in [0, {self.nnodes})", field="--node-rank")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"{self.rdzv_endpoint!r} is not HOST:PORT", field="--rdzv-endpoint",
                                hint="e.g. --rdzv-endpoint node001:29500 (the same on every node)")
            if self.master_addr is not None:
                raise UserError("give either --rdzv-endpoint or --master-addr, not both", field="--rdzv-endpoint",
                                hint="c10d rendezvous (--rdzv-endpoint) needs no node ranks or master address")
        if self.nnodes > 1 and self.master_addr is None and self.rdzv_endpoint is None:
            raise UserError("a multi-node run needs a meeting point", field="--master-addr",
                            hint="pass --rdzv-endpoint HOST:PORT --rdzv-id JOB on every node, or "
                            "--master-addr HOST --master-port PORT --node-rank R")


def in_worker(environ: dict[str, str] | None = None) -> bool:
    """True inside a process that torchrun started."""
    env = os.environ if environ is None else environ
    return all(name in env for name in WORKER_ENV)


def torchrun_command(task: str, config_file: Path, topo: Topology) -> list[str]:
    """The torchrun re-exec for this run (no overrides, no secrets: everything is in the file)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={topo.nproc_per_node}"]
    if topo.rdzv_endpoint is not None:  # c10d: the nodes meet at the endpoint; torchrun assigns node ranks
        cmd += [f"--nnodes={topo.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={topo.rdzv_endpoint}",
                f"--rdzv-id={topo.rdzv_id or 'automodel'}"]
    elif topo.nnodes == 1 and topo.master_addr is None and topo.master_port is None:
        cmd.append("--standalone")  # local rendezvous on a free port
    else:
        cmd += [f"--nnodes={topo.nnodes}", f"--node-rank={topo.node_rank}",
                f"--master-addr={topo.master_addr or '127.0.0.1'}", f"--master-port={topo.master_port or 29500}"]
    return cmd + ["-m", "automodel.trainer.cli", "finetune", task, "-c", str(config_file)]


def worker_environment(environ: Mapping[str, str], nproc_per_node: int, cpus: int) -> tuple[dict[str, str], str]:
    """The workers' environment and a note on their CPU threads. torchrun sets OMP_NUM_THREADS=1 when it is
    unset and prints a banner about it; the cores are shared out here instead (at least 1 per process),
    and a value the user set is kept."""
    env = dict(environ)
    if env.get("OMP_NUM_THREADS"):
        return env, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} per process, as set"
    env["OMP_NUM_THREADS"] = str(max(1, cpus // nproc_per_node))
    return env, f"{env['OMP_NUM_THREADS']} CPU threads per process (OMP_NUM_THREADS; set it to override)"


def write_launch_config(cfg: TrainConfig) -> Path:
    """The resolved config the workers read (secrets as `${NAME}`), in a file only this user can read."""
    fd, name = tempfile.mkstemp(prefix="automodel-launch-", suffix=".yaml")
    with os.fdopen(fd, "w") as handle:
        handle.write(dump_yaml(cfg))
    return Path(name)


def launch(cfg: TrainConfig, topo: Topology) -> int:
    """Run `cfg` with this topology; the exit code of the run."""
    topo.check()
    if in_worker() or topo.world_size == 1:
        if in_worker():  # SIGTERM (a preemption: checkpoint, exit 0) if torchrun dies under this worker
            from automodel.trainer.preempt import stop_with_parent

            stop_with_parent()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg.schedule.accumulation_steps(world)  # fail early, before any model is loaded
        from automodel.trainer.recipe import run

        run(cfg)
        return 0
    cfg.schedule.accumulation_steps(topo.world_size)
    config_file = write_launch_config(cfg)
    cmd = torchrun_command(cfg.task, config_file, topo)
    env, threads = worker_environment(os.environ, topo.nproc_per_node, os.cpu_count() or 1)
    print(f"launching {topo.nproc_per_node} processes on this node ({threads}): {' '.join(cmd[1:])}",
          file=sys.stderr, flush=True)
    try:
        return run_forwarding_stop_signals(cmd, env=env)
    finally:
        config_file.unlink(missing_ok=True)


def run_forwarding_stop_signals(cmd: list[str], *, env: dict[str, str]) -> int:
    """Run torchrun; a SIGTERM or SIGUSR1 sent to this process goes on, as SIGTERM, to its workers.

    The workers finish their step, checkpoint and exit 0 (trainer/preempt.py), so torchrun ends normally.
    Signalling torchrun itself would work too but ends in its own SignalException traceback and a
    non-zero exit; it still gets the signal when its workers cannot be found."""
    from automodel.trainer.preempt import stop_with_parent

    # torchrun gets SIGTERM if this process dies without forwarding anything (kill -9), and passes it on
    child = subprocess.Popen(cmd, env=env, preexec_fn=stop_with_parent)

    def forward(signum: int, frame: object) -> None:
        workers = _children(child.pid)
        for pid in workers or [child.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc); [] where that cannot be read."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command name: state, ppid, ...
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found
