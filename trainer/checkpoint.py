"""Atomic, sharded checkpoints that resume a run exactly, on any number of processes.

Layout under `output_dir/checkpoints/`:

    step_00000012/   dcp/ (torch.distributed.checkpoint: `.metadata` + `__{R}_0.distcp`, one file per rank
                     holding that rank's shard of the trainable weights -- the adapter, or every weight for
                     full fine-tuning -- and of the optimizer state), state.json (step, scheduler, world),
                     rng_rank{R}.pt (one per rank)
    latest           the name of the newest complete checkpoint

Every rank writes its own shard (no gather, no host copy of the whole model or optimizer anywhere); on
load, DCP reads for each rank the slices its current shards need, whatever the world size that wrote
them, so a 2-process checkpoint resumes in 1 process and the other way round. One process writes plain
(unsharded) tensors, which load into FSDP2 shards the same way.

A checkpoint is written into `.tmp-step_N/`, fsynced, renamed to `step_N/` and only then named in
`latest` (itself replaced atomically), so a crash at any point leaves `latest` on a complete one.

`Checkpointer` writes a run's checkpoints: in the loop's thread (the default), or with
`checkpoint.async_save` staged into a host copy of this rank's shard and written by a background thread
(DCP's `async_save`, over a gloo group of its own so its collectives never interleave with FSDP2's) while
training goes on; one write is in flight at a time, and `latest` moves when it has finished.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer.distributed import Dist, barrier

if TYPE_CHECKING:
    import torch
    from torch import nn

LATEST = "latest"
DCP_DIR = "dcp"  # torch.distributed.checkpoint directory inside a step_N checkpoint
_PREFIX = "step_"


def step_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync_tree(path: Path) -> None:
    for file in sorted(path.rglob("*")):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _full_options(*, trainable_only: bool, to_cpu: bool, strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=to_cpu, ignore_frozen_params=trainable_only,
                            strict=strict)


def model_state(model: nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full tensors on rank 0 (empty elsewhere); every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return _local_state(model, trainable_only=trainable_only)
    return get_model_state_dict(model, options=_full_options(trainable_only=trainable_only, to_cpu=True))


def _local_state(model: nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """What `get_model_state_dict` returns for an unsharded model (buffers kept, frozen weights dropped
    with `trainable_only`), on the CPU. Built directly because torch resolves every state-dict key as an
    attribute path, and a QLoRA base's keys (bitsandbytes' `...weight.absmax`, `weight.quant_state.*`)
    are not attributes before bitsandbytes PR #1866: the first checkpoint of a QLoRA run would crash."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad} if trainable_only else set()
    state, copies = {}, {}
    for key, value in model.state_dict().items():
        # a frozen weight's own key, and the quantisation state stored under it
        parts = key.split(".")
        if any(".".join(parts[:n]) in frozen for n in range(1, len(parts) + 1)):
            continue
        if not hasattr(value, "detach"):
            state[key] = value
            continue
        # tied weights (embeddings and head) stay one host copy, saved once
        alias = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if alias not in copies:
            copies[alias] = value.detach().to("cpu")
        state[key] = copies[alias]
    return state


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    # numpy too: Wav2Vec2's SpecAugment draws its time masks from numpy's global generator
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def _quiet_one_process() -> Iterator[None]:
    """DCP warns that it 'assumes a single process' even when told so (no_dist=True); one process is a
    normal run here, not something to warn the user about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def train_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, trainable_only: bool) -> dict[str, Any]:
    """This rank's part of what a checkpoint holds: {"model": weights, "optimizer": state}, keyed by
    parameter names (FQNs), sharded tensors (DTensors) under FSDP2 and plain tensors in one process. Every
    rank must call it; nothing is gathered or copied to the host."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if _is_sharded(model):
        weights = get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=trainable_only))
    else:  # one process: read directly (a QLoRA base's quantisation keys defeat the torch API)
        weights = _local_state(model, trainable_only=trainable_only)
    return {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}


def save(output_dir: str | Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, trainable_only: bool, d: Dist, keep_last: int, extra: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically (every rank its own shard), point `latest` at it, keep the newest
    `keep_last`."""
    import torch.distributed.checkpoint as dcp

    root = checkpoint_root(output_dir)
    tmp = _fresh_tmp(root, step, d)
    # Collective: each rank writes __{rank}_0.distcp with its shards, rank 0 the .metadata index.
    with _quiet_one_process():
        dcp.save(train_state(model, optimizer, trainable_only=trainable_only), checkpoint_id=tmp / DCP_DIR,
                 no_dist=d.world == 1)
    _write_state(tmp, step, d, scheduler=scheduler, extra=extra)
    barrier(d)
    final = root / step_name(step)
    if d.is_main:
        _publish(root, tmp, final, keep_last)
    barrier(d)
    return final


def _tmp_dir(root: Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is renamed into place."""
    return root / f".tmp-{step_name(step)}"


def _fresh_tmp(root: Path, step: int, d: Dist) -> Path:
    """An empty `.tmp-step_N`, made by rank 0 and awaited by every rank."""
    tmp = _tmp_dir(root, step)
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    return tmp


def _write_state(tmp: Path, step: int, d: Dist, *, scheduler: Any, extra: dict[str, Any]) -> None:
    """This rank's RNG state, and rank 0's state.json (step, world size, scheduler, the run's extras)."""
    import torch

    torch.save(rng_state(), tmp / f"rng_rank{d.rank}.pt")
    if d.is_main:
        state = {"step": step, "world": d.world, "scheduler": scheduler.state_dict(), **extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


@dataclass
class _InFlight:
    step: int
    tmp: Path
    future: Any  # concurrent.futures.Future of dcp.async_save


class Checkpointer:
    """The run's checkpoint writer (see the module docstring). `save` returns once the loop may go on;
    `poll` (every step) finishes a background write that is done; `drain` waits for the one in flight
    (before an export, a stop, or the process group's teardown)."""

    def __init__(self, output_dir: str | Path, d: Dist, *, keep_last: int, async_save: bool) -> None:
        self.output_dir, self.root, self.d = Path(output_dir), checkpoint_root(output_dir), d
        self.keep_last, self.async_save = keep_last, async_save
        self._in_flight: _InFlight | None = None
        self._group = None
        if async_save and d.world > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # collective: every rank makes it, now

    def save(self, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             trainable_only: bool, extra: dict[str, Any]) -> None:
        """Checkpoint `step`; a write that fails for the user's reasons (a full disk) is a UserError."""
        try:
            if not self.async_save:
                save(self.output_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                     trainable_only=trainable_only, d=self.d, keep_last=self.keep_last, extra=extra)
                return
            self.drain()
            self._start(step, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainable_only=trainable_only, extra=extra)
        except UserError:
            raise
        except Exception as err:
            raise _as_user_error(self.output_dir, step, err) from None

    def _start(self, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               trainable_only: bool, extra: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp

        d = self.d
        tmp = _fresh_tmp(self.root, step, d)
        _write_state(tmp, step, d, scheduler=scheduler, extra=extra)  # before the shards: their write is the wait
        # Staging copies this rank's shards to host memory before it returns: the next step may change them.
        with _quiet_one_process():
            future = dcp.async_save(train_state(model, optimizer, trainable_only=trainable_only),
                                    checkpoint_id=tmp / DCP_DIR, process_group=self._group, no_dist=d.world == 1)
        self._in_flight = _InFlight(step, tmp, future)

    def poll(self) -> None:
        """Finish the background write if it is done (no collective: ranks may see it done at different steps)."""
        if self._in_flight is not None and self._in_flight.future.done():
            self._finish()

    def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for the write in flight and finish it (`raise_errors=False`: while another error propagates)."""
        if self._in_flight is None:
            return
        try:
            self._finish()
        except Exception:
            if raise_errors:
                raise

    def _finish(self) -> None:
        """Rank 0 publishes the checkpoint: DCP's coordinator finishes only after every rank's shard is
        written (it gathers their results), and every rank wrote its RNG file before starting."""
        flight, self._in_flight = self._in_flight, None
        assert flight is not None
        try:
            flight.future.result()
        except Exception as err:
            raise _as_user_error(self.output_dir, flight.step, err) from None
        if self.d.is_main:
            _publish(self.root, flight.tmp, self.root / step_name(flight.step), self.keep_last)


def _as_user_error(output_dir: Path, step: int, err: Exception) -> Exception:
    failure = write_failure(output_dir, step, err)
    return failure if failure is not None else err


def _publish(root: Path, tmp: Path, final: Path, keep_last: int) -> None:
    """fsync the written checkpoint, rename it into place, point `latest` at it, prune (rank 0)."""
    _fsync_tree(tmp)
    if final.exists():  # a rerun reached the same step again: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _point_latest(root, final.name)
    _prune(root, keep_last, final.name)


def _point_latest(root: Path, name: str) -> None:
    pointer = root / f".{LATEST}.tmp"
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)


def _prune(root: Path, keep_last: int, newest: str) -> None:
    """Keep the `keep_last` newest up to `newest`; later steps belong to a run this one replaced
    (resume=never, or resumed from an older checkpoint) and go too."""
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))
    kept = [p for p in done if p.name <= newest][-keep_last:]
    for old in done:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


def find_latest(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None for a fresh run."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """`auto` → latest in output_dir (or None); `never` → None; else a checkpoint directory path."""
    if resume == "never":
        return None
    if resume == "auto":
        return find_latest(output_dir)
    path = Path(resume)
    if (path / LATEST).is_file():  # a checkpoints/ folder or an output_dir
        path = find_latest(path.parent) or path
    elif (path / "checkpoints" / LATEST).is_file():
        path = find_latest(path) or path
    if not (path / "state.json").is_file():
        raise UserError(f"{resume} is not a checkpoint directory", field="checkpoint.resume",
                        hint="use auto, never, or a path like OUTPUT_DIR/checkpoints/step_00000100")
    return path


def load(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         trainable_only: bool, d: Dist) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return state.json. Each rank reads only
    the slices of the files that its own shards cover, whatever world size wrote them."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = json.loads((path / "state.json").read_text())
    if not (path / DCP_DIR / ".metadata").is_file():
        raise UserError(f"{path} holds no sharded checkpoint ({DCP_DIR}/.metadata is missing): it was written by "
                        "an older version or is incomplete", field="checkpoint.resume",
                        hint="resume from a checkpoint this version wrote, or start fresh with checkpoint.resume=never")
    wanted = train_state(model, optimizer, trainable_only=trainable_only)  # the shapes/shards to fill
    with _quiet_one_process():
        dcp.load(wanted, checkpoint_id=path / DCP_DIR, no_dist=d.world == 1)
    # an adapter-only checkpoint holds no frozen weights: those keys are missing on purpose
    set_model_state_dict(model, wanted["model"], options=StateDictOptions(strict=not trainable_only))
    set_optimizer_state_dict(model, optimizer, wanted["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_rank{d.rank}.pt"
    if state["world"] == d.world and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as full CPU tensors, in this one process (tests and offline tools; the
    engine itself never assembles them)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(path / DCP_DIR)).read_metadata()
    prefix = "model."
    state = {key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
             for key, meta in metadata.state_dict_metadata.items()
             if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    with _quiet_one_process():
        dcp.load({"model": state}, checkpoint_id=path / DCP_DIR, no_dist=True)
    return state


def write_failure(output_dir: str | Path, step: int, err: BaseException) -> UserError | None:
    """The UserError for checkpoint `step` failing to write for a reason the user fixes (an OSError such as a
    full disk, also when torch.distributed.checkpoint wraps it), or None for any other error. The half-written
    `.tmp-` directory goes; `latest` still names the previous complete checkpoint."""
    cause: BaseException | None = err
    oserror = None
    seen = 0
    while cause is not None and oserror is None and seen < 8:  # dcp wraps a rank's error in CheckpointException
        if isinstance(cause, OSError):
            oserror = cause
        failures = getattr(cause, "failures", None)  # CheckpointException: {rank: exception}
        nested = next(iter(failures.values()), None) if isinstance(failures, dict) and failures else None
        cause = nested or cause.__cause__ or cause.__context__
        seen += 1
    if oserror is None:
        return None
    root = checkpoint_root(output_dir)
    shutil.rmtree(_tmp_dir(root, step), ignore_errors=True)
    latest = find_latest(output_dir)
    resume = (f"; {latest} is still the latest checkpoint and a rerun resumes from it" if latest is not None
              else "; no checkpoint was written yet, so a rerun starts at step 0")
    reason = "no space left on the device" if oserror.errno == errno.ENOSPC else (oserror.strerror or str(oserror))
    return UserError(f"checkpoint at step {step} could not be written to {root}: {reason}{resume}",
                     field="output_dir", hint="free disk space (or point output_dir at a larger disk, copying the "
                     "run there) and rerun the same command")
