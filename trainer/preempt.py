"""Preemption: SIGTERM or SIGUSR1 ends a run cleanly at a step boundary, with a checkpoint to resume from.

A cluster that preempts a job (Slurm's `--signal`, a spot instance's notice, Kubernetes' termination)
sends SIGTERM or a user signal some time before it kills the job. The handler only records the signal;
the recipe finishes the step it is in, writes a checkpoint at that step, says how to resume and returns
normally (exit 0). With several processes the ranks agree on the step: the flag rides in the token-count
all-reduce every step already makes, so every rank sees any rank's signal at the same step.

Ctrl-C (SIGINT) is not handled here: it raises KeyboardInterrupt at once (exit 130) and leaves the last
complete checkpoint as `latest`, since a checkpoint is only named there once fully written.

A launcher that dies without passing a signal on (`kill -9`, the OOM killer) would leave torchrun's
workers training on their own (torchrun starts them in sessions of their own) and holding their GPUs.
`stop_with_parent` asks Linux to send SIGTERM when the parent dies: torchrun gets it when `automodel`'s
launcher dies, and each worker when torchrun dies, so the run ends as a preemption does, with a
checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent() -> bool:
    """Linux: SIGTERM to this process when its parent dies (prctl PR_SET_PDEATHSIG). False where that is
    not available. Safe in a `preexec_fn` (between fork and exec: no Python-level locks are taken)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class StopRequest:
    """Installed for the duration of a run (a context manager); `signum` is the first signal received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop request"
