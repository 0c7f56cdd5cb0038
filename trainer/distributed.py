"""Process-group setup and the few collectives the recipe needs.

One process: no process group at all, every collective is the identity. Several (torchrun sets
WORLD_SIZE, RANK, LOCAL_RANK): gloo on CPU, nccl on CUDA, and a 1-D device mesh for FSDP2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch


COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, its device, and the FSDP2 mesh (None alone)."""

    rank: int
    world: int
    device: torch.device
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(*, cpu_collectives: bool = False) -> Dist:
    """Initialise the process group when launched with WORLD_SIZE > 1; pick the device.

    `cpu_collectives` (FSDP2 CPU offload): the shards and gradients live in host memory, so gradient
    clipping and state-dict gathers run collectives on CPU tensors, which nccl cannot; gloo serves those."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda and local_rank >= torch.cuda.device_count():
        # else set_device fails with CUDA's bare "invalid device ordinal"
        from automodel.catalog.errors import UserError

        raise UserError(f"process LOCAL_RANK={local_rank} needs GPU {local_rank}, but this process sees "
                        f"{torch.cuda.device_count()} GPU(s)", field="--nproc-per-node",
                        hint="launch at most one process per visible GPU (check CUDA_VISIBLE_DEVICES)")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return Dist(rank=0, world=1, device=device)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        # Other ranks wait in a collective while rank 0 alone writes a checkpoint or rebuilds and saves the
        # merged model: minutes for a multi-GB model. nccl's default limit (10 min, gloo's is 30) would
        # have its watchdog kill such a run; an hour still ends a real hang.
        backend = ("cuda:nccl,cpu:gloo" if cpu_collectives else "nccl") if cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=device if cuda else None, timeout=COLLECTIVE_TIMEOUT)
    mesh = init_device_mesh(device.type, (world,))
    return Dist(rank=dist.get_rank(), world=world, device=device, mesh=mesh)


def teardown(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks, in place (identity in one process)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


T = TypeVar("T")


def eval_rounds(chunks: Sequence[T], d: Dist) -> Iterator[tuple[int, T, bool]]:
    """This rank's share of `chunks` in an evaluation where every rank runs the same number of forwards
    (FSDP2's all-gathers are collective): round r is chunk r x world + rank; a rank past the end repeats
    the last chunk, whose results must not count. Yields (round, chunk, counts)."""
    for r in range(math.ceil(len(chunks) / d.world)):
        index = r * d.world + d.rank
        yield r, chunks[min(index, len(chunks) - 1)], index < len(chunks)
