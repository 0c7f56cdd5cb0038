"""The trainer tests run the engine's CPU path (gloo, fp32) on every machine: their pinned losses and the
two-process gloo runs assume it. On a GPU machine the engine would take the GPUs (bf16, nccl, one GPU per
process), so the GPUs are hidden from this process and from the torchrun workers the tests start. Tests of
the CUDA branches fake CUDA themselves (tests/trainer/test_distributed.py)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _cpu_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # workers, and this process if CUDA is not initialised yet
    torch = sys.modules.get("torch")
    if torch is not None:  # CUDA may already be initialised by an earlier test: the env var is read once
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
