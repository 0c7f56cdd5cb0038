"""Shared by the asr tests: tiny Whisper and CTC model directories made in-process from
examples/asr/tiny/make_assets.py, tone clips written with soundfile, and small asr configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
CLIPS = REPO / "examples/asr/tiny/data"  # the committed spoken digits (train.jsonl, val.jsonl, clips/)


def make_assets() -> Any:
    return load_script("examples/asr/tiny/make_assets.py", "asr_make_assets")


def write_models(out: Path) -> dict[str, Path]:
    """out/whisper and out/ctc: config.json + processor (2 layers of width 64, as the examples)."""
    ma = make_assets()
    whisper, ctc = ma.whisper_processor(), ma.ctc_processor()
    return {"whisper": ma.write_model(out / "whisper", whisper, ma.whisper_config(whisper)),
            "ctc": ma.write_model(out / "ctc", ctc, ma.ctc_config(ctc))}


def tone(seconds: float, rate: int, freq: float = 440.0) -> Any:
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, seconds: float, rate: int = 16000, freq: float = 440.0) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, freq), rate)
    return path


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def asr_config(model: Path, source: Path, output_dir: Path, *overrides: str, validation: Path | None = None) -> Any:
    from automodel.trainer.config import config_from_data

    data: dict[str, Any] = {
        "task": "asr",
        "model": {"name": str(model), "init": "random"},
        "peft": {"method": "none"},
        "distributed": {"activation_checkpointing": False},
        "data": {"source": str(source), "format": "audio", "language": "en"},
        "schedule": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 4, "log_every": 1},
        "optimizer": {"lr": 3e-3},
        "checkpoint": {"export": "none"},
        "logging": {"progress_bar": False},
        "seed": 0,
        "output_dir": str(output_dir),
    }
    if validation is not None:
        data["data"]["validation"] = {"source": str(validation)}
    return config_from_data(data, list(overrides), environ={})
