"""Which GPUs does this machine have, and what do the user's hardware flags mean?

`detect()` asks nvidia-smi (one subprocess, no torch) and honours CUDA_VISIBLE_DEVICES. Only when
nvidia-smi is missing and the caller allows it does it fall back to torch.cuda, because importing torch
costs seconds and `automodel recommend` must answer in under one. `resolve_hardware()` turns
`--gpu/--gpu-mem/--gpus/--nodes` (or the detected machine) into a `profile.Hardware`; flags always win.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from automodel.advisor.profile import Hardware
from automodel.catalog.errors import UserError

if TYPE_CHECKING:
    from automodel.catalog.schema import GPUSpec

MIB = 2**20
SMI_QUERY = ("nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class VisibleGPU:
    """One GPU as the driver reports it."""

    index: int
    uuid: str
    name: str
    memory_bytes: int


def _visible_filter(gpus: list[VisibleGPU], env: str | None) -> list[VisibleGPU]:
    """Keep the GPUs CUDA_VISIBLE_DEVICES lets a process see (indices or UUID prefixes, in its order)."""
    if env is None:
        return gpus
    tokens = [t.strip() for t in env.split(",") if t.strip()]
    kept: list[VisibleGPU] = []
    for token in tokens:
        if token.lstrip("-").isdigit():
            if int(token) < 0:  # CUDA stops enumerating at the first invalid entry
                break
            match = [g for g in gpus if g.index == int(token)]
        else:
            match = [g for g in gpus if g.uuid.startswith(token) or g.uuid == f"GPU-{token}"]
        if not match:
            break
        kept.extend(g for g in match if g not in kept)
    return kept


def parse_smi(text: str) -> list[VisibleGPU]:
    """Parse `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        try:
            memory_mib = float(parts[3])
        except ValueError:  # "[N/A]" on some virtualised GPUs
            continue
        gpus.append(VisibleGPU(int(parts[0]), parts[1], parts[2], int(memory_mib * MIB)))
    return gpus


def _from_smi(run: Callable[..., subprocess.CompletedProcess[str]]) -> list[VisibleGPU] | None:
    """None when nvidia-smi is absent or fails; a (possibly empty) list otherwise."""
    if shutil.which(SMI_QUERY[0]) is None:
        return None
    try:
        done = run(list(SMI_QUERY), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return _visible_filter(parse_smi(done.stdout), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _from_torch() -> list[VisibleGPU]:
    """torch.cuda already applies CUDA_VISIBLE_DEVICES itself."""
    import torch  # only reached when nvidia-smi is missing and the caller allowed it

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(VisibleGPU(i, str(getattr(props, "uuid", "")), props.name, int(props.total_memory)))
    return gpus


def _name_candidates(name: str) -> list[str]:
    """`NVIDIA H100 80GB HBM3` -> [..., `h100-80gb-hbm3`]: nvidia-smi names in the catalog's alias style."""
    text = name.strip().lower()
    for prefix in ("nvidia ", "geforce ", "tesla ", "amd ", "instinct "):
        text = text.removeprefix(prefix)
    return [name, text, text.replace(" ", "-"), text.replace(" ", "")]


def _catalog_gpu(name: str) -> GPUSpec | None:
    """The catalog's GPUSpec for a name, alias or nvidia-smi name; None when the catalog does not know it."""
    from automodel.catalog.registry import find_gpu

    for candidate in _name_candidates(name):
        try:
            return find_gpu(candidate)
        except UserError:
            continue
    return None


def detect(
    *, allow_torch: bool = False, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> Hardware | None:
    """The local GPUs as a single-node `Hardware`, or None when none are visible.

    Mixed GPUs are described by the smallest one, since every rank must fit.
    """
    gpus = _from_smi(run)
    source = "nvidia-smi"
    if gpus is None:
        torch_cheap = "torch" in sys.modules or (allow_torch and importlib.util.find_spec("torch") is not None)
        if not torch_cheap:
            return None
        gpus, source = _from_torch(), "torch.cuda"
    if not gpus:
        return None
    smallest = min(gpus, key=lambda g: g.memory_bytes)
    spec = _catalog_gpu(smallest.name)
    return Hardware(
        gpu=spec.name if spec else None,
        memory_bytes=smallest.memory_bytes,
        gpus_per_node=len(gpus),
        nodes=1,
        bf16_tflops=spec.bf16_tflops if spec else None,
        source=source,
    )


def parse_gpu_mem(text: str) -> int:
    """`24`, `24G`, `24GB`, `24GiB` -> bytes (GiB, as GPU vendors count); the catalog's parser, named --gpu-mem."""
    from automodel.catalog.units import parse_memory

    return parse_memory(text, field="--gpu-mem")


def resolve_hardware(
    *,
    gpu: str | None = None,
    gpu_mem: str | None = None,
    gpus: int | None = None,
    nodes: int | None = None,
    detect_fn: Callable[[], Hardware | None] | None = None,
) -> Hardware:
    """Flags first; the detected machine only fills what the flags leave open."""
    if gpus is not None and gpus < 1:
        raise UserError(f"must be at least 1, got {gpus}", field="--gpus", hint="give the GPUs per node, e.g. --gpus 8")
    if nodes is not None and nodes < 1:
        raise UserError(f"must be at least 1, got {nodes}", field="--nodes", hint="e.g. --nodes 2")
    spec = None
    if gpu is not None:
        spec = _catalog_gpu(gpu)
        if spec is None:
            from automodel.catalog.registry import find_gpu

            try:  # no candidate matched: the catalog's own error says which entries come close or a stem matches
                find_gpu(gpu)
            except UserError as err:
                hint = err.hint if "--gpu-mem" in (err.hint or "") else f"{err.hint}; or give --gpu-mem GB instead"
                raise UserError(err.message, field="--gpu", hint=hint) from None
    memory = parse_gpu_mem(gpu_mem) if gpu_mem is not None else None
    if spec is None and memory is None:
        detected = (detect_fn or (lambda: detect(allow_torch=True)))()
        if detected is None:
            raise UserError(
                "no GPU given and none detected on this machine (no nvidia-smi / CUDA device)",
                field="--gpu",
                hint="give --gpu NAME (e.g. --gpu A100-80GB) or --gpu-mem GB (e.g. --gpu-mem 24)",
            )
        updates: dict[str, int] = {}
        if gpus is not None:
            updates["gpus_per_node"] = gpus
        if nodes is not None:
            updates["nodes"] = nodes
        return detected.model_copy(update=updates) if updates else detected
    return Hardware(
        gpu=spec.name if spec else None,
        memory_bytes=memory if memory is not None else spec.memory_bytes,  # type: ignore[union-attr]
        gpus_per_node=gpus or 1,
        nodes=nodes or 1,
        bf16_tflops=spec.bf16_tflops if spec else None,
        source="flags",
    )
