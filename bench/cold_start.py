"""How fast do the torch-free commands answer cold, and what do they import? Target: <= 1 s, no torch.

Cold: a fresh process per run, the installed `automodel` entry point as a user types it (falls back to
`python -m automodel.advisor.cli` in a tree without it), wall time around the subprocess; the table shows
the median of --runs. Imports: each command run once more in a fresh interpreter that then lists which
heavy packages ended up in `sys.modules` (torch must never be there; transformers, huggingface_hub,
peft, accelerate, datasets should not be either for catalog models). Warm: `rank.recommend()` in-process,
the catalog already loaded, with the number of analytic estimates each scenario needs.

Usage: `.venv/bin/python bench/cold_start.py [--runs N] [--no-warm]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 1.0
_SCRIPT = Path(sys.executable).with_name("automodel")
AUTOMODEL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "automodel.advisor.cli"]
COMMANDS = [
    ["catalog", "list"],
    ["catalog", "show", "llama-3.2-1b"],
    ["estimate", "llama-3.1-70b", "--method", "lora", "--gpus", "8", "--json"],
    ["estimate", "qwen2.5-7b-instruct", "--mode", "inference", "--new-tokens", "512", "--gpu-mem", "24", "--fit"],
    ["recommend", "--model", "qwen2.5-vl-7b-instruct", "--gpu", "A100-80GB", "--gpus", "2"],
    ["recommend", "--task", "vlm", "--gpu-mem", "24"],
    ["recommend", "--task", "llm", "--gpu-mem", "24", "--json"],
    ["recommend", "--task", "llm", "--gpu", "H100-SXM", "--gpus", "8", "--nodes", "2", "--priority", "quality"],
]
HEAVY = ("torch", "transformers", "huggingface_hub", "peft", "accelerate", "datasets", "safetensors", "numpy")
# Runs one command in-process with its output swallowed, then reports which heavy packages it imported.
_PROBE = """
import contextlib, io, json, sys
from automodel.advisor.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def cold(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*AUTOMODEL, *args], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def heavy_imports(args: list[str]) -> list[str]:
    probe = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"automodel {' '.join(args)} exited {result['code']}")
    return result["heavy"]


def warm(runs: int) -> list[tuple[str, float, int]]:
    from automodel.advisor import rank
    from automodel.advisor.profile import Hardware, Profile, Requirements, Task
    from automodel.catalog.registry import load_catalog

    load_catalog()
    calls = 0
    real = rank.estimate

    def counted(*a, **k):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(*a, **k)

    rank.estimate = counted
    rows = []
    for label, task, mem, gpus, nodes, priority in [
        ("vlm, 24 GiB", "vlm", 24, 1, 1, "balanced"),
        ("llm, 24 GiB", "llm", 24, 1, 1, "balanced"),
        ("llm, 8 x 80 GiB x 4 nodes, quality", "llm", 80, 8, 4, "quality"),
    ]:
        profile = Profile(task=Task(modality=task), hardware=Hardware(memory_bytes=mem * 2**30, gpus_per_node=gpus,
                          nodes=nodes), requirements=Requirements(priority=priority))
        calls, times = 0, []
        for _ in range(runs):
            start = time.perf_counter()
            rank.recommend(profile)
            times.append(time.perf_counter() - start)
        rows.append((label, min(times), calls // runs))
    rank.estimate = real
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold runs per command (median reported)")
    parser.add_argument("--no-warm", action="store_true", help="skip the in-process rank.recommend() table")
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"automodel, cold (fresh process, median of {args.runs}; target <= {TARGET_S:g} s, no torch)")
    for col in ("command", "median s", "min s", "max s", f"<= {TARGET_S:g} s", "heavy imports"):
        table.add_column(col, justify="left" if col in ("command", "heavy imports") else "right")
    failed = False
    for command in COMMANDS:
        t = cold(command, args.runs)
        heavy = heavy_imports(command)
        ok = statistics.median(t) <= TARGET_S and "torch" not in heavy
        failed |= not ok
        table.add_row("automodel " + " ".join(command), f"{statistics.median(t):.3f}", f"{min(t):.3f}",
                      f"{max(t):.3f}", "yes" if statistics.median(t) <= TARGET_S else "NO", ", ".join(heavy) or "-")
    console.print(table)
    if not args.no_warm:
        table = Table(title="rank.recommend() in-process (catalog loaded)")
        for col in ("scenario", "best s", "estimates"):
            table.add_column(col)
        for label, best, n in warm(args.runs):
            table.add_row(label, f"{best:.4f}", str(n))
        console.print(table)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
