"""The largest run that fits a GPU under the headroom rule (`headroom.py`, shared with `recommend`).

`max_fit` keeps everything in the plan but one knob and binary-searches that knob on the estimate's
`peak_reserved` (device level, what an OOM is decided on): the micro batch at the plan's sequence
length, and the sequence length at the plan's micro batch. Peak memory grows monotonically with both,
so the search is exact for the estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from automodel.catalog.memory.estimate import estimate
from automodel.catalog.memory.headroom import headroom_limit
from automodel.catalog.memory.plan import MemoryEstimate, Plan

MAX_BATCH = 4096
MAX_SEQ_LEN = 1 << 21  # 2M tokens: beyond any context window in the catalog


@dataclass(frozen=True)
class FitResult:
    """What fits a GPU of `budget_bytes` under the headroom rule (peak reserved <= `limit_bytes`): None
    where even 1 does not; the estimate at each maximum."""

    budget_bytes: int
    limit_bytes: int
    max_micro_batch: int | None
    max_seq_len: int | None
    at_max_batch: MemoryEstimate | None
    at_max_seq_len: MemoryEstimate | None

    def to_json(self) -> dict[str, object]:
        return {
            "budget_bytes": self.budget_bytes,
            "limit_bytes": self.limit_bytes,
            "max_micro_batch": self.max_micro_batch,
            "max_seq_len": self.max_seq_len,
            "peak_reserved_bytes_at_max_batch": self.at_max_batch.peak_reserved if self.at_max_batch else None,
            "peak_reserved_bytes_at_max_seq_len": self.at_max_seq_len.peak_reserved if self.at_max_seq_len else None,
        }


def _largest(fits: Callable[[int], MemoryEstimate | None], upper: int) -> tuple[int | None, MemoryEstimate | None]:
    """Largest n in [1, upper] with fits(n) not None, assuming monotone; exponential then binary search."""
    best = fits(1)
    if best is None:
        return None, None
    lo, hi = 1, 2
    while hi <= upper and (est := fits(hi)) is not None:
        lo, best, hi = hi, est, hi * 2
    hi = min(hi, upper + 1)  # fits(hi) fails or is out of range
    while hi - lo > 1:
        mid = (lo + hi) // 2
        est = fits(mid)
        if est is None:
            hi = mid
        else:
            lo, best = mid, est
    return lo, best


def max_fit(config: dict[str, object], plan: Plan, budget_bytes: int) -> FitResult:
    """Largest micro batch (at plan.seq_len) and longest seq len (at plan.micro_batch) that fit a GPU of
    `budget_bytes` under the headroom rule."""
    limit = headroom_limit(budget_bytes)

    def probe(**change: int) -> MemoryEstimate | None:
        est = estimate(config, plan.model_copy(update=change))
        return est if est.peak_reserved <= limit else None

    batch, at_batch = _largest(lambda n: probe(micro_batch=n), MAX_BATCH)
    seq, at_seq = _largest(lambda n: probe(seq_len=n), MAX_SEQ_LEN)
    return FitResult(budget_bytes, limit, batch, seq, at_batch, at_seq)
