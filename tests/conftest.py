"""Shared fixtures: a tiny Llama config + tokenizer + copy/reverse/sort data, made in-process (no network),
and a factory for small TrainConfigs that train on them in about a second on a CPU."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach the Hub. The whole suite ran offline only because bench/memory_accuracy.py sets this
# when it is collected, so a test file run alone could probe the network; the tests of the unreachable-Hub
# path drop it on purpose (tests/advisor/test_bad_inputs.py, tests/catalog/test_registry.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextlib.contextmanager
def interrupted_at_call(task_module: Any, call: int) -> Iterator[None]:
    """Within the block, the task adapter's `forward_loss` raises KeyboardInterrupt (a Ctrl-C) on its
    `call`-th call (count micro batches and validation batches to pick a step's first), then is restored."""
    real, calls = task_module.forward_loss, [0]

    def dying(model: Any, batch: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(model, batch)

    task_module.forward_loss = dying
    try:
        yield
    finally:
        task_module.forward_loss = real


def load_script(path: str, name: str) -> Any:
    """A script of the repo (`path` from its root: an example's asset maker, a bench script) imported as
    module `name` (registered in sys.modules: dataclasses resolve their module by name)."""
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_make_assets() -> Any:
    """examples/llm/tiny/make_assets.py as a module (it is a script, not a package)."""
    return load_script("examples/llm/tiny/make_assets.py", "make_assets")


@pytest.fixture(scope="session")
def make_assets() -> Any:
    """The tiny example's asset generator (examples/llm/tiny/make_assets.py) as a module."""
    return load_make_assets()


@pytest.fixture(scope="session")
def tiny_assets(make_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/ (config.json, hidden 32, 2 layers + tokenizer), data/train.jsonl (256 rows), data/val.jsonl (24)."""
    out = tmp_path_factory.mktemp("tiny_assets")
    make_assets.write_assets(out, n_train=256, n_val=24, seed=0, hidden=32, layers=2)
    return out


def tiny_config_data(assets: Path, output_dir: Path) -> dict[str, Any]:
    return {
        "model": {"name": str(assets / "model"), "init": "random"},
        "peft": {"method": "lora", "rank": 4, "alpha": 8},
        "distributed": {"activation_checkpointing": False},
        "data": {
            "source": str(assets / "data/train.jsonl"),
            "format": "instruction",
            "instruction": {"prompt_template": "Question: {question}\nInput: {input}\nAnswer:",
                            "answer_column": "answer"},
            "max_seq_len": 48,
            "validation": {"source": str(assets / "data/val.jsonl")},
        },
        "schedule": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 6, "log_every": 1},
        "optimizer": {"lr": 1e-2},
        "lr_schedule": {"kind": "cosine", "warmup_steps": 1},
        "checkpoint": {"export": "none"},
        "logging": {"progress_bar": False},
        "seed": 0,
        "output_dir": str(output_dir),
    }


@pytest.fixture
def tiny_config(tiny_assets: Path, tmp_path: Path) -> Callable[..., Any]:
    """`tiny_config("schedule.max_steps=4", ..., output_dir=...)` -> a validated TrainConfig."""
    from automodel.trainer.config import config_from_data

    def make(*overrides: str, output_dir: Path | None = None) -> Any:
        data = tiny_config_data(tiny_assets, output_dir or tmp_path / "run")
        return config_from_data(data, list(overrides), environ={})

    return make
