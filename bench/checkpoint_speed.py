"""How long checkpoints stall the training loop: `checkpoint.async_save` off (written in the loop) vs on
(staged on the host, written by a background thread), on the same full fine-tuning run.

One process on the CPU, a random-init Llama (8 layers, hidden 512, vocab 32000 by default: ~58M
parameters, so each checkpoint holds ~0.7 GB of fp32 weights and AdamW state), the instruction data
of bench/train_throughput.py, a checkpoint every `--every` steps. The loop's time is the run's own
tokens/s figure (RunResult: the loop from its first step to its last, the final drain of an async write
included; model building and export are outside it). The two settings alternate `--repeats` times; medians are reported. What a
GPU node gains is larger: there the step is fast and the staging copy (device to host) is the only part
the loop waits for, while here the background write competes with training for the same 2 cores.

    .venv/bin/python bench/checkpoint_speed.py [--steps 12] [--every 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the sibling script's data and model maker

import train_throughput as tt  # noqa: E402


def config(root: Path, args: argparse.Namespace, out: Path, async_save: bool) -> Any:
    from automodel.trainer.config import config_from_data

    return config_from_data({
        "model": {"name": str(root / "model"), "init": "random"},
        "peft": {"method": "none"},
        "distributed": {"activation_checkpointing": False},
        "data": {"source": str(root / "train.jsonl"), "format": "instruction", "max_seq_len": 256,
                 "instruction": {"prompt_template": tt.TEMPLATE, "answer_column": "answer"}},
        "schedule": {"global_batch_size": 4, "micro_batch_size": 4, "max_steps": args.steps,
                     "log_every": args.steps, "checkpoint_every": args.every},
        "optimizer": {"lr": 1e-5},
        "checkpoint": {"export": "none", "resume": "never", "keep_last": 1, "async_save": async_save},
        "logging": {"progress_bar": False},
        "seed": 0, "output_dir": str(out),
    }, [], environ={})


def checkpoint_bytes(out: Path) -> int:
    latest = out / "checkpoints" / (out / "checkpoints/latest").read_text().strip() / "dcp"
    return sum(f.stat().st_size for f in latest.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="checkpoint every N steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=32000)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from automodel.trainer.recipe import run

    asset_args = argparse.Namespace(samples=256, max_context=60, vocab_size=args.vocab_size, hidden=args.hidden,
                                    layers=args.layers)
    rates: dict[bool, list[float]] = {False: [], True: []}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = tt.make_assets(Path(tmp) / "assets", asset_args)
        for repeat in range(args.repeats):
            for async_save in (False, True):
                out = Path(tmp) / f"run-{repeat}-{async_save}"
                started = time.perf_counter()
                result = run(config(root, args, out, async_save))
                rates[async_save].append(result.tokens_per_s)
                print(f"async_save={async_save}: {result.tokens_per_s:,.0f} tokens/s in the loop, the whole run "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
                size = checkpoint_bytes(out)
    saves = args.steps // args.every
    table = Table(title=f"checkpoint stalls, full fine-tuning (torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads)")
    for name in ("checkpoint.async_save", "loop tokens/s (median)", "runs"):
        table.add_column(name)
    for async_save in (False, True):
        table.add_row(str(async_save).lower(), f"{statistics.median(rates[async_save]):,.0f}",
                      ", ".join(f"{r:,.0f}" for r in rates[async_save]))
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    table.add_row("ratio (async / sync)", f"{ratio:.2f}x", "")
    console = Console()
    console.print(table)
    console.print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab_size}; "
                  f"{args.steps} steps, {saves} checkpoints of {size / 1e9:.2f} GB each (weights + AdamW, "
                  f"fp32), 1 process; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(json.dumps({"sync_tokens_per_s": rates[False], "async_tokens_per_s": rates[True],
                      "checkpoint_bytes": size}))


if __name__ == "__main__":
    main()
