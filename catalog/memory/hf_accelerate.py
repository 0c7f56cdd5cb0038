"""What Hugging Face accelerate says about a model's memory, computed offline on the meta model.

Two questions users already ask accelerate, answered through its library API (never the Hub: the model is
built from the catalog's or the user's config on the meta device, so nothing is downloaded):

- `accelerate_figures`: the numbers `accelerate estimate-memory` prints (largest layer, total size, and
  "Training using Adam"), reproduced with the same functions it calls (`calculate_maximum_sizes` on an
  fp32 meta model, `estimate_training_usage`), so `automodel estimate --compare accelerate` can put them
  beside ours and say why they differ;
- `device_map_estimate`: inference over several GPUs the way `from_pretrained(device_map="auto")` places a
  model for `generate` (`get_balanced_memory`, then `infer_auto_device_map` with the model's
  `_no_split_modules`): each GPU holds whole decoder blocks, the first the embeddings, the last the output
  head; the estimate is the busiest GPU's (its weights, its blocks' share of the KV cache, the prefill
  transient of one block, the logits where the head sits).

Imports torch, transformers and accelerate at the top: import this module lazily (the analytic estimate,
`recommend` and `catalog` stay torch-free).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.commands.estimate import estimate_training_usage
from accelerate.utils import (
    calculate_maximum_sizes,
    compute_module_sizes,
    get_balanced_memory,
    infer_auto_device_map,
)

from automodel.catalog.errors import UserError
from automodel.catalog.memory.analytic import estimate_analytic, reserve_model
from automodel.catalog.memory.plan import MemoryEstimate, Plan
from automodel.catalog.params import build_meta_model, params_method_for

_DTYPE = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32}
# accelerate's own name for the precision, as `accelerate estimate-memory --dtypes` takes it.
_ACCELERATE_PRECISION = {"bf16-mixed": "bfloat16", "bf16": "bfloat16", "fp32": "float32"}


@contextlib.contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """accelerate warns once per device that is not present on this machine; planning for GPUs the user
    will rent is the point here, so those warnings are noise."""
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _meta_model(config: dict[str, Any]) -> torch.nn.Module:
    if params_method_for(config) == "analytic":
        raise UserError(f"{config.get('model_type')} is a remote-code architecture that transformers cannot build, "
                        "so accelerate cannot size it", field="--compare",
                        hint="drop --compare / --gpus for this model (the analytic estimate still answers)")
    return build_meta_model(config)


@dataclass(frozen=True)
class AccelerateFigures:
    """`accelerate estimate-memory`'s row for one precision, in bytes."""

    precision: str  # accelerate's name: bfloat16 or float32
    total_bytes: int  # the model's weights in that precision ("Total Size")
    largest_layer_bytes: int  # its largest no-split layer ("Largest Layer")
    largest_layer: tuple[str, ...]
    training_bytes: int  # "Training using Adam": max(model, gradients, optimizer, step) of estimate_training_usage
    training_parts: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {"precision": self.precision, "total_bytes": self.total_bytes,
                "largest_layer_bytes": self.largest_layer_bytes, "largest_layer": list(self.largest_layer),
                "training_bytes": self.training_bytes, "training_parts": self.training_parts}


def accelerate_figures(config: dict[str, Any], precision: str) -> AccelerateFigures:
    """accelerate's figures exactly as `accelerate estimate-memory` computes them: sizes of the fp32 model
    (as its `init_empty_weights` builds it), halved for 16-bit, and `estimate_training_usage` on the fp32 size."""
    model = _meta_model(config).to(torch.float32)
    total_fp32, (largest_fp32, names) = calculate_maximum_sizes(model)
    name = _ACCELERATE_PRECISION[precision]
    parts = estimate_training_usage(total_fp32, name)
    divisor = 2 if name == "bfloat16" else 1
    return AccelerateFigures(name, int(total_fp32 // divisor), int(largest_fp32 // divisor), tuple(names),
                             int(max(parts.values())), {k: int(v) for k, v in parts.items()})


def differences(figures: AccelerateFigures, ours: MemoryEstimate, plan: Plan) -> list[str]:
    """Why our figure is not accelerate's, term by term, with the numbers of this plan."""
    gib = 2**30
    out = [f"accelerate's \"Training using Adam\" ({figures.training_bytes / gib:.2f} GiB) is the largest of four "
           "buckets for full fine-tuning of the whole model with Adam (model, gradients, optimizer, step), not "
           "their sum, at batch size 1; it counts no activations, logits, KV cache, allocator reserve or CUDA "
           "context, and knows no LoRA, QLoRA, gradient checkpointing or sharding."]
    if plan.mode == "train":
        out.append(f"ours is the peak of one {plan.method} step as the trainer runs it: weights "
                   f"{ours.weights / gib:.2f} + trainable state (adapters, gradients, optimizer) "
                   f"{(ours.adapter_weights + ours.gradients + ours.optimizer) / gib:.2f} + activations "
                   f"{ours.activations / gib:.2f} + logits {ours.logits / gib:.2f} GiB at {plan.seq_len} tokens x "
                   f"{plan.micro_batch}, over {plan.gpus} GPU(s); peak allocated {ours.peak_allocated / gib:.2f}, "
                   f"reserved (what nvidia-smi shows) {ours.peak_reserved / gib:.2f} GiB.")
    else:
        out.append(f"for inference, accelerate's \"Total Size\" ({figures.total_bytes / gib:.2f} GiB) is the weights "
                   f"only; ours adds the KV cache {ours.kv_cache / gib:.2f}, the prefill {ours.activations / gib:.2f} "
                   f"and logits {ours.logits / gib:.2f} GiB (peak reserved {ours.peak_reserved / gib:.2f} GiB).")
    if plan.method == "full" and plan.precision == "bf16-mixed" and plan.mode == "train":
        out.append("with bf16-mixed full fine-tuning both count fp32 master weights and two fp32 Adam states; "
                   "accelerate adds 1.5x the weights for gradients where the trainer keeps one fp32 copy.")
    return out


@dataclass(frozen=True)
class GPUShare:
    """What one GPU holds under the device map, and its estimate."""

    gpu: int
    modules: tuple[str, ...]
    weight_bytes: int
    blocks: int
    estimate: MemoryEstimate

    def to_json(self) -> dict[str, object]:
        return {"gpu": self.gpu, "blocks": self.blocks, "weight_bytes": self.weight_bytes,
                "peak_allocated_bytes": self.estimate.peak_allocated,
                "peak_reserved_bytes": self.estimate.peak_reserved, "modules": list(self.modules)}


@dataclass(frozen=True)
class Placement:
    """The device map over `plan.gpus` GPUs and the busiest GPU's estimate."""

    shares: tuple[GPUShare, ...]
    busiest: GPUShare

    def to_json(self) -> dict[str, object]:
        return {"method": "accelerate.infer_auto_device_map (from_pretrained device_map='auto', balanced)",
                "busiest_gpu": self.busiest.gpu, "gpus": [s.to_json() for s in self.shares]}


def device_map_estimate(config: dict[str, Any], plan: Plan, gpu_mem_bytes: int | None = None) -> Placement:
    """Inference over `plan.gpus` GPUs as `device_map="auto"` places the model, estimated per GPU.

    Per GPU: its weights as accelerate sizes them; the single-GPU analytic KV cache (and adapters) times its
    share of the decoder blocks; the prefill transient of one block where it holds any; the logits where the
    output head sits; the allocator reserve and CUDA context of one process per GPU (no NCCL: the blocks hand
    activations over with device copies)."""
    if plan.mode != "inference":
        raise UserError("the device map is for --mode inference", field="--gpus", hint="add --mode inference")
    model = _meta_model(config)
    dtype = _DTYPE[plan.precision]
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    budget = gpu_mem_bytes if gpu_mem_bytes is not None else 1 << 50  # no budget: balance by size alone
    with _quiet_accelerate():
        max_memory = get_balanced_memory(model, max_memory={i: budget for i in range(plan.gpus)},
                                         no_split_module_classes=no_split, dtype=dtype, low_zero=False)
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=dtype)
    sizes = compute_module_sizes(model, dtype=dtype)
    bad = sorted({str(d) for d in device_map.values() if not isinstance(d, int)})
    if bad:
        raise UserError(f"the model does not fit {plan.gpus} GPU(s) of {budget / 2**30:.1f} GiB: accelerate would "
                        f"offload to {', '.join(bad)}", field="--gpus", hint="give more GPUs or a larger --gpu-mem")
    # The language model's decoder blocks carry the KV cache (a VLM's vision blocks and Whisper's encoder do not).
    blocks = {name for name, module in model.named_modules() if type(module).__name__ in no_split
              and not any(part in name for part in ("visual", "vision", "encoder"))}
    one = estimate_analytic(config, plan.model_copy(update={"gpus": 1}))
    total_blocks = max(1, len(blocks))
    head = next((n for n in device_map if n == "lm_head" or n.endswith(".lm_head")), None)
    factor, overhead = reserve_model(plan.model_copy(update={"gpus": 1}))
    shares = []
    for gpu in range(plan.gpus):
        names = [n for n, d in device_map.items() if d == gpu]
        # device_map keys are modules or whole subtrees: count the blocks inside each key
        held = sum(1 for b in blocks if any(n == "" or b == n or b.startswith(n + ".") for n in names))
        weights = sum(sizes[n] for n in names)
        share = held / total_blocks
        logits = one.logits if head in names or "" in names else 0
        kv, adapters = one.kv_cache * share, one.adapter_weights * share
        prefill = one.activations if held else 0
        peak = weights + adapters + kv + prefill + logits
        est = MemoryEstimate(
            engine="analytic", params=one.params, trainable_params=0, weights=int(weights),
            adapter_weights=int(adapters), gradients=0, optimizer=0, activations=int(prefill), logits=int(logits),
            kv_cache=int(kv), comm_buffers=0, overhead=overhead, peak_allocated=int(peak),
            peak_reserved=int(math.ceil(peak * factor)) + overhead,
            assumptions=(*one.assumptions[:1], *_placement_assumptions(plan), *one.assumptions[2:]),
        )
        shares.append(GPUShare(gpu, tuple(names), int(weights), held, est))
    busiest = max(shares, key=lambda s: s.estimate.peak_reserved)
    return Placement(tuple(shares), busiest)


def _placement_assumptions(plan: Plan) -> tuple[str, ...]:
    return (f"{plan.gpus} GPUs, placed as from_pretrained(device_map='auto') does for generate: accelerate's "
            "get_balanced_memory + infer_auto_device_map on the meta model, whole decoder blocks per GPU "
            "(pipeline, one GPU busy at a time, no sharding); the figure is the busiest GPU's, each GPU holding "
            "its blocks' share of the KV cache, the output head's GPU the logits.",)
