"""How long `automodel estimate MODEL --simulate` takes, per model: wall time of `estimate_simulated`
(two truncated-depth fake-tensor steps + extrapolation) and its answer beside the analytic one.

Target (issue 3): llama-3.1-70b --method lora --gpus 8 in under 60 s on 2 CPU cores.
Run: .venv/bin/python bench/simulate_speed.py [model ...]
"""

from __future__ import annotations

import argparse
import os
import time

CASES: tuple[tuple[str, dict[str, object]], ...] = (
    ("llama-3.1-70b", {"method": "lora", "gpus": 8}),
    ("llama-3.1-70b", {"method": "full", "gpus": 8}),
    ("llama-3.1-8b", {"method": "lora", "gpus": 1}),
    ("qwen2.5-72b-instruct", {"method": "lora", "gpus": 8}),
    ("qwen3-8b", {"method": "full", "gpus": 4, "seq_len": 4096}),
    ("llama-3.2-1b", {"mode": "inference", "seq_len": 8192, "new_tokens": 512}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="only these catalog names (default: all cases)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    from automodel.catalog.memory.analytic import estimate_analytic
    from automodel.catalog.memory.plan import Plan
    from automodel.catalog.registry import resolve
    from automodel.trainer.simulate import estimate_simulated

    import_s = time.perf_counter() - t0
    table = Table(title=f"--simulate wall time ({os.cpu_count()} CPUs visible; imports {import_s:.1f} s)")
    for col in ("model", "plan", "seconds", "simulated peak GiB", "analytic peak GiB", "peak at"):
        table.add_column(col)
    for name, fields in CASES:
        if args.models and name not in args.models:
            continue
        plan = Plan(**fields)
        config = resolve(name).config
        start = time.perf_counter()
        sim = estimate_simulated(config, plan)
        seconds = time.perf_counter() - start
        ana = estimate_analytic(config, plan)
        where = next((a.split(" ")[2] for a in sim.assumptions if a.startswith("peak at")), "?")
        table.add_row(
            name,
            " ".join(f"{k}={v}" for k, v in fields.items()),
            f"{seconds:.1f}",
            f"{sim.peak_allocated / 2**30:.2f}",
            f"{ana.peak_allocated / 2**30:.2f}",
            where,
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
