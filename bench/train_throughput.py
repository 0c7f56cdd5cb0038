"""Training throughput on CPU: this engine vs transformers' `Trainer` + peft, on the same work.

Same model (a random-init Llama: 4 layers, hidden 256, vocab 32000 by default), same LoRA (all linear
layers, rank 16), same tokenized samples (the engine's LLM task adapter: instruction format,
answer-only loss), same global/micro batch, optimizer, schedule and number of steps, fp32, one
process. The Trainer gets the usual SFT set-up: `DataCollatorForSeq2Seq` padding to the longest
sample of each batch, default sampler. Tokens/s counts the non-padding tokens each side consumed
(both see the same number of samples), over the training loop only (model build and data prep are
excluded). The data is generated here: instructions with a context of random length (so batches
have real length variance, as instruction data does).

    .venv/bin/python bench/train_throughput.py [--steps 20] [--repeats 3] [--vocab-size 32000] [--packing]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "Context: {context}\nQuestion: {question}\nInput: {input}\nAnswer:"


def make_assets(out: Path, args: argparse.Namespace) -> Path:
    spec = importlib.util.spec_from_file_location("make_assets", REPO / "examples/llm/tiny/make_assets.py")
    assert spec is not None and spec.loader is not None
    assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assets)
    rng = random.Random(0)
    rows = assets.make_rows(args.samples, seed=0)
    for row in rows:  # a context of random length: real instruction data varies a lot in length
        row["context"] = " ".join(rng.choice(assets.LETTERS) for _ in range(rng.randint(4, args.max_context)))
    tok = assets.make_tokenizer(assets.corpus(rows) + [r["context"] for r in rows[:200]])
    (out / "model").mkdir(parents=True)
    tok.save_pretrained(out / "model")
    config = assets.tiny_llama_config(args.vocab_size, hidden=args.hidden, layers=args.layers, heads=4)
    config["intermediate_size"] = int(args.hidden * 8 / 3) // 8 * 8  # Llama's SwiGLU ratio
    config["initializer_range"] = 0.02
    (out / "model/config.json").write_text(json.dumps(config))
    with open(out / "train.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return out


def engine_config(root: Path, args: argparse.Namespace, out: Path) -> Any:
    from automodel.trainer.config import config_from_data

    return config_from_data({
        "model": {"name": str(root / "model"), "init": "random"},
        "peft": {"method": "lora", "rank": 16, "alpha": 32, "dropout": 0.0},
        "distributed": {"activation_checkpointing": False},
        "data": {"source": str(root / "train.jsonl"), "format": "instruction", "max_seq_len": 512,
                 "packing": args.packing,
                 "instruction": {"prompt_template": TEMPLATE, "answer_column": "answer"}},
        "schedule": {"global_batch_size": args.global_batch, "micro_batch_size": args.micro_batch,
                     "max_steps": args.steps, "log_every": args.steps},
        "optimizer": {"lr": 1e-4, "grad_clip": 1.0},
        "lr_schedule": {"kind": "cosine", "warmup_steps": 2},
        "checkpoint": {"export": "none", "resume": "never", "keep_last": 1},
        "logging": {"progress_bar": False},
        "seed": 0, "output_dir": str(out),
    }, [], environ={})


def run_engine(root: Path, args: argparse.Namespace, out: Path) -> float:
    from automodel.trainer.recipe import run

    return run(engine_config(root, args, out)).tokens_per_s


def run_trainer(root: Path, args: argparse.Namespace, out: Path) -> float:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from automodel.trainer.modeling import apply_lora, build_model
    from automodel.trainer.tasks.llm import build_samples, load_processor

    cfg = engine_config(root, args, out)
    tok = load_processor(str(root / "model"))
    samples = build_samples(cfg.data.model_copy(update={"packing": False}), tok, validation=False, seed=0)
    dataset = [{"input_ids": list(s.input_ids), "labels": list(s.labels)} for s in samples]
    model = apply_lora(build_model(json.loads((root / "model/config.json").read_text()), device="cpu", seed=0),
                       rank=16, alpha=32, dropout=0.0, targets="all-linear")
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    seen = {"tokens": 0}

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seen["tokens"] += sum(len(f["input_ids"]) for f in features)
        return pad(features)

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            clock["end"] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.global_batch // args.micro_batch, max_steps=args.steps,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=1.0, weight_decay=0.0,
        logging_steps=args.steps, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate, callbacks=[Clock()]).train()
    return seen["tokens"] / (clock["end"] - clock["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the two this many times; report medians")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--max-context", type=int, default=120, help="longest random context, in letters")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--packing", action="store_true", help="engine packs samples into 512-token rows")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        root = make_assets(Path(tmp) / "assets", args)
        ours, theirs = [], []
        for i in range(args.repeats):
            ours.append(run_engine(root, args, Path(tmp) / f"engine{i}"))
            theirs.append(run_trainer(root, args, Path(tmp) / f"trainer{i}"))
    table = Table(title=f"CPU training throughput (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for col in ("engine", "tokens/s (median)", "runs"):
        table.add_column(col)
    a, b = statistics.median(ours), statistics.median(theirs)
    table.add_row("automodel recipe" + (" (packing)" if args.packing else " (length-bucketed)"), f"{a:,.0f}",
                  ", ".join(f"{x:,.0f}" for x in ours))
    table.add_row("transformers Trainer + peft", f"{b:,.0f}", ", ".join(f"{x:,.0f}" for x in theirs))
    table.add_row("ratio", f"{a / b:.2f}x", ", ".join(f"{x / y:.2f}" for x, y in zip(ours, theirs, strict=True)))
    console = Console()
    console.print(table)
    console.print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab_size}, LoRA r16 "
                  f"all-linear; batch {args.global_batch} (micro {args.micro_batch}), {args.steps} steps, "
                  f"{args.samples} samples, fp32, 1 process; load average at the end "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine makes wall-clock noisy: "
                  "compare the per-run ratios)", style="dim")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
