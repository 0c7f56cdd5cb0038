"""bench/gpu_check.py --smoke: every row of the GPU check runs on tiny configs on the CPU (so the script
does not rot between the GPU runs it exists for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

pytest.importorskip("torch")



def test_smoke_runs_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script("bench/gpu_check.py", "gpu_check")
    out = tmp_path / "check.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    llm = [r for r in data["rows"] if "image" not in r["name"] and "asr" not in r["name"]]
    assert len(llm) == 8 and all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in llm)
    assert rows["full 32x2 adamw-8bit"]["optimizer"] == "adamw-8bit"
    assert {r["method"] for r in llm} == {"lora", "full", "qlora"}
    assert all(r["est_allocated_gib"] > 0 for r in llm)
    # The vlm and asr rows run through their task adapters.
    for name in ("vlm lora 1 image", "asr full x16"):
        assert rows[name]["status"] == "ok" and rows[name]["tokens_per_s"] > 0, rows[name]
    printed = capsys.readouterr().out
    assert "qlora" in printed and f"wrote {out}" in printed
    # MFU's model FLOPs: 6N for full, 4N for LoRA, plus causal attention.
    config = bench.TINY_LLAMA
    full = bench.flops_per_token(config, "full", 64, 100_000)
    lora = bench.flops_per_token(config, "lora", 64, 100_000)
    attention = 6 * 2 * 64 * 64
    assert full - attention == pytest.approx(1.5 * (lora - attention))
