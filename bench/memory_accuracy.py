"""How close is `automodel estimate` to published peak-memory measurements, and to accelerate's rule?

Reads bench/data/measured-memory.csv (a copy of shared/reference/measured-memory.csv: published runs
from torchtune, PEFT, Qwen, ms-swift, LLaMA-Factory, faster-whisper), turns every in-scope row into a
`Plan` by fixed rules (no per-row constants), runs the analytic estimator and prints, per row, measured
vs estimated (allocated vs allocated; reserved vs reserved; device-level vs reserved + CUDA context),
the relative error, and accelerate's `estimate-memory` figure for the same row (training: "Training
using Adam" = 4x the model in the dtype, i.e. 8 B/param for 16-bit, 16 B/param for fp32; inference:
"Total Size" in the dtype). Then median and p90 absolute error of both, and the out-of-scope rows with
the reason. Models outside the catalog are read from bench/data/configs/*.json (sources inside).

    .venv/bin/python bench/memory_accuracy.py [--csv PATH] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch: configs come from the catalog or bench/data

from automodel.catalog.architecture import dims_from_config  # noqa: E402
from automodel.catalog.errors import UserError  # noqa: E402
from automodel.catalog.memory.analytic import FRAGMENTATION, FRAGMENTATION_INFERENCE  # noqa: E402
from automodel.catalog.memory.estimate import estimate  # noqa: E402
from automodel.catalog.memory.plan import MemoryEstimate, Plan  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
GIB = 1024**3
Measure = Literal["allocated", "reserved", "device"]
TORCHTUNE_ALPACA_MAX_SEQ_LEN = 512  # torchtune alpaca_dataset(max_seq_len=512) default truncation
SHORT_SEQ_LEN = 64  # PEFT's RAFT twitter_complaints examples: "short (~<100 tokens, pad to longest)"
_TARGET_WORDS = {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",),
                 "output_proj": ("o_proj",), "mlp": ("gate_proj", "up_proj", "down_proj")}


@dataclass(frozen=True)
class Scoped:
    config: dict[str, object]
    plan: Plan
    measure: Measure
    measured_bytes: float
    ddp: bool = False  # replicated data parallel: one GPU's memory plus DDP's gradient buckets


@dataclass(frozen=True)
class OutOfScope:
    reason: str


def _first_int(text: str) -> int | None:
    """First integer in a cell; `4k` / `32K` mean 4096 / 32768 tokens."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*([kK](?![a-zA-Z]))?", text.replace(",", ""))
    if not match:
        return None
    value = float(match.group(1)) * (1024 if match.group(2) else 1)
    return int(value)


def load_config(hf_id: str) -> dict[str, object] | None:
    """The catalog's config (instruct variants share their base model's architecture), else bench/data."""
    from automodel.catalog.registry import resolve

    # Chat/instruct variants share their base model's architecture (`-Instruct`, `-Chat`, `-it`, `-chat-hf`).
    base = re.sub(r"-chat-hf$", "-hf", re.sub(r"-(Instruct|Chat|chat|it)(?=-v[\d.]+$|$)", "", hf_id))
    for name in dict.fromkeys((hf_id, base)):
        try:
            return resolve(name).config
        except UserError:
            pass
        path = DATA / "configs" / (name.replace("/", "__") + ".json")
        if path.is_file():
            return json.loads(path.read_text())["config"]
    return None


def _out_of_scope(row: dict[str, str]) -> str | None:
    """The reason a row cannot be compared like with like, or None."""
    text = " ".join(row[k] for k in ("method", "optimizer", "grad_ckpt", "sharding", "notes", "precision")).lower()
    value = row["peak_mem_gb"].strip()
    if row["measured_or_estimated"].strip() != "measured":
        return "a rule of thumb, not a measurement"
    if value[:1] in "<>" or "oom" in value.lower() or "fits" in value.lower():
        return "bound only (fits / OOM), no peak figure"
    if "compile" in text and "no compile" not in text:
        return "torch.compile (fuses kernels, frees intermediates earlier)"
    if "torchtune" in row["source"] and "optimization flags" in row["source"].lower() and \
            row["notes"].lstrip().startswith(("+", "peak active GiB; +")) and "no compile" not in text:
        return "cumulative row of torchtune's optimisation table (includes torch.compile and chunked CE above it)"
    if "chunked" in text:
        return "chunked cross-entropy (not the fp32 full-vocabulary loss the estimator models)"
    if "in_bwd" in text or "in-backward" in text:
        return "optimizer-in-backward (gradients freed per parameter)"
    if "paged" in text:
        return "paged optimizer (states in unified memory)"
    if "offload" in text:
        return "offloaded optimizer / activations (DeepSpeed or torchtune offloading)"
    if "megatron" in text:
        return "Megatron-LM (different parallelism and kernels)"
    if "deepspeed" in text or "zero" in text:
        return "DeepSpeed ZeRO (not FSDP2)"
    if ("naive model parallel" in text or "device_map" in text) and "summed" not in text:
        return "naive model parallel (layers split over GPUs, no data parallelism)"
    if "vllm" in text or "sglang" in text:
        return "vLLM/SGLang preallocate a KV-cache pool (gpu_memory_utilization), not HF generate"
    if "gptq" in text or "awq" in text or "int4" in text or "int8" in text:
        return "GPTQ/int8 base weights (the estimator models bitsandbytes NF4)"
    if "embedding" in text and "lm_head" in text:
        return "embedding and lm_head trained as full modules beside LoRA (not a Plan option)"
    if "unsloth" in text or "liger" in text:
        return "custom fused kernels (Unsloth / Liger: chunked loss, offloaded checkpoints)"
    if "faster-whisper" in text or "ctranslate2" in text or "openai/whisper impl" in text:
        return "not a transformers implementation (CTranslate2 / openai-whisper)"
    if "(init " in row["notes"]:
        return "reserved memory set by model loading (init reserved is within 2% of the peak), not the step"
    if "unpacked" in row["seq_len"] and "max" in row["seq_len"]:
        return "variable-length unpacked batches: the length of the batch that set the peak is not stated"
    if _first_int(row["micro_batch"]) is None:
        return "micro batch not stated"
    return None


def _precision(row: dict[str, str], torchtune: bool, mode: str) -> str:
    p = row["precision"].lower()
    if "fp32" in p and "states" not in p:
        return "fp32"
    if "pure" in p or mode == "inference" or torchtune:
        return "bf16"  # torchtune trains every parameter (adapters too) in bf16; fp16 has bf16's bytes
    # AMP / "mixed", and HF Trainer/peft stacks: fp32 trainable weights (peft autocast_adapter_dtype)
    return "bf16-mixed"


def _targets(text: str) -> tuple[str, ...] | str:
    inside = re.search(r"\(([^)]*)\)", text)
    if not inside or "all" in inside.group(1).lower():
        return "all-linear"
    names: list[str] = []
    for word in re.split(r"[,+;\s]+", inside.group(1).split(";")[0].lower()):
        if word in _TARGET_WORDS:
            names.extend(_TARGET_WORDS[word])
        elif "_" in word or word in ("w1", "w2"):
            names.append(word)
    return tuple(dict.fromkeys(names)) or "all-linear"


def classify(row: dict[str, str]) -> Scoped | OutOfScope:
    """Row -> Plan by fixed rules, or the reason it is out of scope."""
    reason = _out_of_scope(row)
    if reason:
        return OutOfScope(reason)
    config = load_config(row["model"].strip())
    if config is None:
        return OutOfScope(f"no offline config for {row['model']} (architecture not in catalog or bench/data)")
    torchtune = "torchtune" in row["source"]
    mode = "inference" if "inference" in row["task"].lower() else "train"
    method_text = row["method"].lower()
    method = "qlora" if "qlora" in method_text else "lora" if "lora" in method_text else "full"
    seq_text = row["seq_len"].lower()
    plan: dict[str, object] = {"mode": mode, "method": method, "precision": _precision(row, torchtune, mode),
                               "micro_batch": _first_int(row["micro_batch"]) or 1,
                               "gpus": _first_int(row["num_gpus"]) or 1}
    if mode == "inference":
        if "summed" in row["notes"].lower():  # total over the GPUs a device_map split the model across
            plan["gpus"] = 1
        numbers = [int(n) for n in re.findall(r"\d+", seq_text)]
        if "generated" in seq_text and len(numbers) >= 2:
            plan.update(seq_len=numbers[0], new_tokens=numbers[1])
        if "beam" in row["task"].lower():  # beams decode as a batch
            plan["micro_batch"] = (_first_int(row["micro_batch"]) or 1) * (_first_int(row["task"].split("beam")[1]) or 1)
        if "audio" in seq_text:
            plan.update(seq_len=4, new_tokens=444, audio_seconds=30.0)  # 30 s windows, <= 448 positions
    else:
        seq = _first_int(seq_text)
        if seq is None:
            if "short" in seq_text:
                seq = SHORT_SEQ_LEN
            elif torchtune:
                seq = TORCHTUNE_ALPACA_MAX_SEQ_LEN
            else:
                return OutOfScope("sequence length not stated")
        plan["seq_len"] = seq
        # The measured stacks (torchtune's default recipes, HF Trainer/peft, ms-swift, LLaMA-Factory) compute
        # the full logits; the engine's chunked loss is its own saving, so the rows are estimated without it.
        plan["chunked_loss"] = False
        plan["grad_ckpt"] = row["grad_ckpt"].strip().lower().startswith(("on", "full", "default", "ms-swift"))
        plan["optimizer"] = "adamw-8bit" if "8-bit" in row["optimizer"] else "adamw"
        accum = re.search(r"\bGA\s*(\d+)|accumulation\D{0,12}(\d+)", row["notes"] + " " + row["micro_batch"])
        if accum:
            plan["grad_accum"] = int(accum.group(1) or accum.group(2))
        if method != "full":
            plan["lora_rank"] = _first_int(row["lora_rank"]) or 8
            plan["lora_targets"] = _targets(row["lora_rank"])
        pixels = re.search(r"max_pixels\s*=?\s*(\d+)", seq_text)
        if pixels:  # one image at the processor's pixel cap; max_length counts its tokens too
            cap = int(pixels.group(1))
            side = int(cap**0.5)
            plan.update(images=1, image_size=(side, side), max_pixels=cap)
            vision = dims_from_config(config).vision
            # the estimator's own count
            image_tokens = vision.image((side, side), max_pixels=cap).tokens if vision is not None else 0
            plan["seq_len"] = max(1, seq - image_tokens)
    ddp = bool(re.search(r"\bddp\b|distributeddataparallel", row["sharding"].lower()))
    if ddp:  # every rank holds the whole model: estimate one GPU (DDP's buckets are added in `run`)
        plan["gpus"] = 1
    return Scoped(config, Plan(**plan), _measure(row), _measured_bytes(row), ddp)


def _measure(row: dict[str, str]) -> Measure:
    notes, source = row["notes"].lower(), row["source"].lower()
    if "vram" in notes or "nvidia-smi" in notes or "device-level" in notes:
        return "device"
    if "allocated" in notes or "active" in notes or "peft" in source:
        return "allocated"
    # "reserved" in the notes, ms-swift's memory(GiB) (max_memory_reserved), and every source that does
    # not say what it measured: compared with the allocator's reserve (what an OOM is decided on), no context.
    return "reserved"


def _measured_bytes(row: dict[str, str]) -> float:
    mb = re.search(r"(\d{3,6})\s*MB", row["notes"])
    if mb:  # nvidia-smi style MiB in the notes is the exact figure
        return int(mb.group(1)) * 1024**2
    return float(re.match(r"[\d.]+", row["peak_mem_gb"].strip()).group()) * GIB  # type: ignore[union-attr]


def predicted(est: MemoryEstimate, measure: Measure) -> float:
    if measure == "allocated":
        return est.peak_allocated
    if measure == "reserved":
        return est.peak_reserved - est.overhead
    return est.peak_reserved


def accelerate_rule(est: MemoryEstimate, plan: Plan) -> float:
    """accelerate estimate-memory: 'Training using Adam' = max(model, grads, 2 states, step) = 4x the
    model in the dtype (float16 column for 16-bit runs); inference: 'Total Size' in the dtype."""
    per_param = 4 if plan.precision == "fp32" else 2
    return est.params * per_param * (1 if plan.mode == "inference" else 4)


def run(csv_path: Path) -> dict[str, object]:
    rows = list(csv.DictReader(line for line in csv_path.open(encoding="utf-8") if not line.startswith("#")))
    results, skipped = [], []
    for i, row in enumerate(rows, start=1):
        item = classify(row)
        if isinstance(item, OutOfScope):
            skipped.append({"row": i, "model": row["model"], "method": row["method"], "reason": item.reason})
            continue
        est = estimate(item.config, item.plan)
        pred = predicted(est, item.measure)
        if item.ddp:  # DDP copies gradients into its all-reduce buckets (gradient_as_bucket_view=False)
            pred += est.gradients * (FRAGMENTATION if item.measure != "allocated" else 1)
        acc = accelerate_rule(est, item.plan)
        results.append({
            "row": i, "model": row["model"].split("/")[-1], "method": item.plan.method, "mode": item.plan.mode,
            "seq": item.plan.seq_len, "batch": item.plan.micro_batch, "gpus": item.plan.gpus,
            "measure": item.measure, "measured_gib": item.measured_bytes / GIB, "estimated_gib": pred / GIB,
            "error": pred / item.measured_bytes - 1, "accelerate_gib": acc / GIB,
            "accelerate_error": acc / item.measured_bytes - 1,
        })
    return {"rows": results, "out_of_scope": skipped, "summary": summarise(results)}


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))] if ordered else float("nan")


def summarise(results: list[dict[str, object]]) -> dict[str, float]:
    ours = [abs(float(r["error"])) for r in results]  # type: ignore[arg-type]
    acc = [abs(float(r["accelerate_error"])) for r in results]  # type: ignore[arg-type]
    return {"rows": len(results), "median_abs_error": statistics.median(ours) if ours else float("nan"),
            "p90_abs_error": _p90(ours), "accelerate_median_abs_error": statistics.median(acc) if acc else float("nan"),
            "accelerate_p90_abs_error": _p90(acc)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DATA / "measured-memory.csv")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.csv)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'row':>3} {'model':28} {'method':6} {'seq':>6} {'b':>3} {'gpu':>3} {'measure':9} "
          f"{'measured':>8} {'ours':>7} {'err':>7} {'accel.':>7} {'err':>7}")
    for r in report["rows"]:  # type: ignore[union-attr]
        print(f"{r['row']:>3} {r['model'][:28]:28} {r['method']:6} {r['seq']:>6} {r['batch']:>3} {r['gpus']:>3} "
              f"{r['measure']:9} {r['measured_gib']:>8.2f} {r['estimated_gib']:>7.2f} {r['error']:>+7.1%} "
              f"{r['accelerate_gib']:>7.2f} {r['accelerate_error']:>+7.1%}")
    s = report["summary"]
    print(f"\n{s['rows']} rows in scope (GiB; allocator factor {FRAGMENTATION} training, "  # type: ignore[index]
          f"{FRAGMENTATION_INFERENCE} inference)")
    print(f"automodel analytic: median |err| {s['median_abs_error']:.1%}, p90 |err| {s['p90_abs_error']:.1%}")  # type: ignore[index]
    print(f"accelerate rule:    median |err| {s['accelerate_median_abs_error']:.1%}, "  # type: ignore[index]
          f"p90 |err| {s['accelerate_p90_abs_error']:.1%}")  # type: ignore[index]
    print("\nout of scope:")
    for o in report["out_of_scope"]:  # type: ignore[union-attr]
        print(f"{o['row']:>3} {o['model'][:40]:40} {o['method'][:24]:24} {o['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
