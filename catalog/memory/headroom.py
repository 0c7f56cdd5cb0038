"""The headroom rule: when does a plan fit a GPU? One rule for every command that answers it.

`automodel recommend`, the wizard, `estimate --gpu-mem` and `estimate --fit` all decide "fits" here: a plan
fits a GPU when its estimated peak *reserved* memory (allocator reserve and CUDA context included: what
nvidia-smi shows) is at most HEADROOM (90 %) of the GPU's memory. The other 10 % covers what no estimate
sees: fragmentation spikes, NCCL buffers, an unusually long batch, a second process on the card.
Import-free on purpose, so the CLI can state the rule without loading the estimator.
"""

from __future__ import annotations

HEADROOM = 0.90
HEADROOM_RULE = (f"a plan fits when its estimated peak reserved memory is at most {HEADROOM:.0%} of one GPU's "
                 "memory (the rest is headroom for fragmentation, NCCL buffers and longer batches)")


def headroom_limit(memory_bytes: int) -> int:
    """The bytes of a GPU with `memory_bytes` that a plan may use under the headroom rule."""
    return int(HEADROOM * memory_bytes)
