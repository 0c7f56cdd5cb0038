"""How fast does `automodel recommend` answer? Prints a table; the target is <= 1 s cold, without torch.

Cold: a fresh interpreter per run (`automodel recommend ...` as a user types it), wall time measured
around the subprocess. Warm: `rank.recommend()` in-process, the catalog already loaded, with the number
of analytic estimates each scenario needs. Usage: `.venv/bin/python bench/recommend_speed.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
AUTOMODEL = [sys.executable, "-m", "automodel.advisor.cli"]
COLD = [
    ["recommend", "--task", "vlm", "--gpu-mem", "24"],
    ["recommend", "--task", "llm", "--gpu-mem", "24", "--json"],
    ["recommend", "--task", "llm", "--gpu", "H100-SXM", "--gpus", "8", "--nodes", "2", "--priority", "quality"],
]
TORCH_CHECK = (
    "import sys, automodel.advisor.cli as c; c.main(['recommend', '--task', 'vlm', '--gpu-mem', '24', '--json']);"
    "print('TORCH', 'torch' in sys.modules, file=sys.stderr)"
)


def cold(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*AUTOMODEL, *args], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    console = Console()
    table = Table(title=f"automodel recommend, cold (fresh process, {runs} runs)")
    for col in ("command", "min s", "median s", "max s", "<= 1 s"):
        table.add_column(col, justify="right" if col != "command" else "left")
    for args in COLD:
        t = cold(args, runs)
        table.add_row("automodel " + " ".join(args), f"{min(t):.3f}", f"{statistics.median(t):.3f}", f"{max(t):.3f}",
                      "yes" if statistics.median(t) <= 1.0 else "NO")
    console.print(table)
    probe = subprocess.run([sys.executable, "-c", TORCH_CHECK], cwd=ROOT, capture_output=True, text=True, check=True)
    console.print(f"torch imported by recommend: {'TORCH True' in probe.stderr}")
    table = Table(title="rank.recommend() in-process (catalog loaded)")
    for col in ("scenario", "best s", "estimates"):
        table.add_column(col)
    for label, best, n in warm(runs):
        table.add_row(label, f"{best:.4f}", str(n))
    console.print(table)


if __name__ == "__main__":
    main()
