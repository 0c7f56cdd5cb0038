"""Atomic checkpoints that resume a run exactly.

Layout under `output_dir/checkpoints/`:

    step_00000012/   model.pt (trainable weights: the adapter, or every weight for full fine-tuning),
                     optimizer.pt, state.json (step, scheduler, world), rng_rank{R}.pt (one per rank)
    latest           the name of the newest complete checkpoint

A checkpoint is written into `.tmp-step_N/`, fsynced, renamed to `step_N/` and only then named in
`latest` (itself replaced atomically), so a crash at any point leaves `latest` on a complete one.
Weights and optimizer state go through torch.distributed.checkpoint's state-dict API as full (unsharded)
tensors gathered on rank 0; on load every rank reads the file and keeps its own shard. That works the
same on gloo/CPU and nccl, for one process or many, and the files do not depend on the world size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer.distributed import Dist, barrier

if TYPE_CHECKING:
    import torch
    from torch import nn

LATEST = "latest"
_PREFIX = "step_"


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
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(output_dir: str | Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, trainable_only: bool, d: Dist, keep_last: int, extra: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep_last`."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    root = checkpoint_root(output_dir)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    weights = model_state(model, trainable_only=trainable_only)
    optim = get_optimizer_state_dict(model, optimizer, options=_full_options(trainable_only=False, to_cpu=True))
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    torch.save(rng_state(), tmp / f"rng_rank{d.rank}.pt")
    if d.is_main:
        torch.save(weights, tmp / "model.pt")
        torch.save(optim, tmp / "optimizer.pt")
        state = {"step": step, "world": d.world, "scheduler": scheduler.state_dict(), **extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    barrier(d)
    if d.is_main:
        _fsync_tree(tmp)
        if final.exists():  # a rerun reached the same step again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _point_latest(root, final.name)
        _prune(root, keep_last, final.name)
    barrier(d)
    return final


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
    """Restore weights, optimizer, scheduler and this rank's RNG; return state.json."""
    import torch
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = json.loads((path / "state.json").read_text())
    # mmap: the N ranks of a node page in one shared copy instead of each holding the full file in memory
    weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    # an adapter-only checkpoint holds no frozen weights: those keys are missing on purpose
    options = _full_options(trainable_only=trainable_only, to_cpu=False, strict=not trainable_only)
    set_model_state_dict(model, weights, options=options)
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True, mmap=True)
    set_optimizer_state_dict(model, optimizer, optim, options=_full_options(trainable_only=False, to_cpu=False))
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_rank{d.rank}.pt"
    if state["world"] == d.world and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state
