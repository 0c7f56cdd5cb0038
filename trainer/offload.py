"""Activation offloading: the tensors autograd saves in the forward wait for backward in host memory.

`offloaded_activations(enabled)` wraps the training forward (trainer/recipe.py, and the simulator's
step). Inside it, every tensor autograd saves for backward that is larger than `MIN_BYTES` and is not a
parameter is copied to host memory (pinned, asynchronously on the compute stream) as it is saved, and
copied back when backward unpacks it; the device copy is freed as soon as nothing else holds it. With
gradient checkpointing (`distributed.activation_checkpointing`) what autograd saves are the checkpointed
blocks' inputs (torch's non-reentrant checkpoint saves them through the same hooks), so the device keeps
about one block's input instead of one per layer; the recomputed block's tensors in backward stay on the
device. Without checkpointing every block's saved tensors go to the host. Parameters stay (FSDP2 frees
its unsharded copies itself), and so do small tensors (masks, norms' statistics), whose copies would
cost more time than memory. The loss's gradients (trainer/loss.py) are not saved tensors and stay.

The cost is PCIe time: c x hidden bytes per token per layer each way with checkpointing. On a CPU
device the host is the device, so nothing moves; the simulator (`simulate=True`) replaces the copy by
a placeholder and a fresh tensor of the same size in backward, which is what the GPU's memory sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

MIN_BYTES = 2**20  # tensors below 1 MiB stay on the device


@contextlib.contextmanager
def offloaded_activations(enabled: bool, *, simulate: bool = False) -> Iterator[None]:
    """Offload saved activations to host memory within the block (see the module docstring)."""
    if not enabled:
        yield
        return
    import torch

    def pack(t: torch.Tensor) -> Any:
        if isinstance(t, torch.nn.Parameter) or t.numel() * t.element_size() < MIN_BYTES:
            return t
        if simulate:  # the device's view: the tensor leaves in forward, a new one arrives in backward
            return _Placeholder(t.size(), t.dtype, t.device)
        if t.device.type == "cpu":
            return t
        host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=torch.cuda.is_available())
        host.copy_(t, non_blocking=True)
        return (t.device, host)

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, _Placeholder):
            return torch.empty(packed.size, dtype=packed.dtype, device=packed.device)
        if isinstance(packed, tuple):
            device, host = packed
            return host.to(device, non_blocking=True)
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


class _Placeholder:
    __slots__ = ("size", "dtype", "device")

    def __init__(self, size: Any, dtype: Any, device: Any) -> None:
        self.size, self.dtype, self.device = size, dtype, device
