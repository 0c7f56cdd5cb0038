"""Shared helpers of the vlm tests: the tiny example's asset maker (Gemma-3-style and Qwen2-VL-style
processors and configs, synthetic image rows) and config data for a short run."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
make_assets: Any = load_script("examples/vlm/tiny/make_assets.py", "vlm_make_assets")


@lru_cache(maxsize=2)
def processor(style: str) -> Any:
    return make_assets.tiny_processor(style)


def model_dir(root: Path, style: str) -> Path:
    """A model directory (config.json + processor, no weights) of the tiny `style` VLM under `root`."""
    out = root / f"model-{style}"
    if not (out / "config.json").is_file():
        make_assets.write_model(out, style)
    return out


def run_config(root: Path, style: str, train: Path, **sections: Any) -> dict[str, Any]:
    """Config data for a few-step LoRA run of the tiny `style` VLM on `train` (chat rows)."""
    data: dict[str, Any] = {
        "task": "vlm",
        "model": {"name": str(model_dir(root, style)), "init": "random"},
        "peft": {"method": "lora", "rank": 8, "alpha": 16},
        "distributed": {"activation_checkpointing": False},
        "data": {"source": str(train), "format": "chat", "max_seq_len": 128},
        "schedule": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 8, "log_every": 1},
        "optimizer": {"lr": 3e-3},
        "logging": {"progress_bar": False},
        "checkpoint": {"export": "none"},
        "seed": 0,
        "output_dir": str(root / "out"),
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data
