"""The ranking engine: `recommend(profile) -> Recommendations`, pure and torch-free.

For every catalog model of the task's modality it applies the user's filters, then looks for the
cheapest strategy that fits one GPU of the stated size, using the analytic memory estimator:

- methods, in order: full fine-tuning (only when quality matters: priority balanced or quality),
  LoRA, QLoRA; a forced `--method` tries only that one;
- within a method, gradient checkpointing and then more GPUs (FSDP2 shards weights, gradients and
  optimizer state) are switched on only when the smaller setup does not fit;
- headroom policy: a plan fits when its estimated peak *reserved* memory (what nvidia-smi shows,
  allocator reserve and CUDA context included) is at most `HEADROOM` (90 %) of one GPU's memory.

Fitting models are scored (0-100, `scoring.py`) from use-case fit (without --use-case: general
assistants ahead of specialists), quality (size), latency (smaller is faster), the method (full > LoRA >
QLoRA) and recency (a newer checkpoint of comparable size ranks higher); the weights depend on the
priority, so `quality` moves the answer to bigger models and `latency` to smaller ones. Every pick and
every exclusion says why, with numbers (the sentences are written by `explain.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

from automodel.advisor.explain import Miss, reasons, summary, too_big
from automodel.advisor.profile import Profile
from automodel.advisor.scoring import MFU, newest_release, score, train_seconds
from automodel.catalog.errors import UserError
from automodel.catalog.memory.estimate import estimate
from automodel.catalog.memory.headroom import HEADROOM_RULE, headroom_limit
from automodel.catalog.memory.plan import MemoryEstimate, Plan, format_image_size
from automodel.catalog.registry import load_catalog
from automodel.catalog.schema import FamilySpec, ModelSpec

__all__ = ["MFU", "Recommendation", "Recommendations", "recommend", "train_seconds"]

ASSUMPTIONS: tuple[str, ...] = (
    HEADROOM_RULE,
    "a plan uses every GPU given (FSDP2 over gpus x nodes); fewer only for QLoRA (one process) or a "
    "--global-batch that does not split that far; gradient checkpointing only when needed",
    "training FLOPs per token: full 6*N, LoRA/QLoRA 4*N (no weight gradients for the frozen base), "
    "+2*N with gradient checkpointing (one more forward); N = active parameters",
    f"training time at {MFU['full']:.0%} MFU of the GPU's dense bf16 peak ({MFU['qlora']:.0%} for QLoRA)",
)


@dataclass(frozen=True)
class Exclusion:
    model: str
    reason: str
    # "requirement": a flag rules the model out before any estimate; "memory": no plan fits the GPUs.
    kind: Literal["requirement", "memory"] = "memory"


@dataclass(frozen=True)
class Recommendation:
    """One fitting model, the plan it was estimated with, and why it ranks where it does."""

    rank: int
    model: ModelSpec
    plan: Plan
    estimate: MemoryEstimate
    gpus_per_node: int
    nodes: int
    gpu_mem_bytes: int
    score: float
    reasons: tuple[str, ...]
    summary: str = ""  # a few words for the table's "why" column
    train_seconds: float | None = None

    @property
    def headroom_bytes(self) -> int:
        return self.gpu_mem_bytes - self.estimate.peak_reserved

    def to_json(self) -> dict[str, object]:
        m = self.model
        est = self.estimate.to_json()
        return {
            "rank": self.rank,
            "model": m.name,
            "hf_id": m.hf_id,
            "family": m.family,
            "modality": m.modality,
            "params": m.params,
            "strategy": {
                "method": self.plan.method,
                "lora_rank": self.plan.lora_rank if self.plan.method != "full" else None,
                "precision": self.plan.precision,
                "grad_ckpt": self.plan.grad_ckpt,
                "gpus": self.gpus_per_node,
                "nodes": self.nodes,
                "micro_batch": self.plan.micro_batch,
                "grad_accum": self.plan.grad_accum,
                "seq_len": self.plan.seq_len,
                **sample_strategy(m.modality, self.plan),
            },
            "estimate": {
                "peak_allocated_bytes": est["peak_allocated_bytes"],
                "peak_reserved_bytes": est["peak_reserved_bytes"],
                "breakdown": est["breakdown"],
            },
            "gpu_mem_bytes": self.gpu_mem_bytes,
            "headroom_bytes": self.headroom_bytes,
            "score": self.score,
            "reasons": list(self.reasons),
            "train_hours": None if self.train_seconds is None else round(self.train_seconds / 3600, 2),
        }


@dataclass(frozen=True)
class Recommendations:
    profile: Profile
    recommendations: tuple[Recommendation, ...]
    excluded: tuple[Exclusion, ...]
    assumptions: tuple[str, ...] = field(default=ASSUMPTIONS)

    def top(self, k: int) -> tuple[Recommendation, ...]:
        return self.recommendations[:k]

    def to_json(self, inputs: dict[str, object], top: int) -> str:
        """The `--json` document (kept here, not in render.py, so --json never imports rich)."""
        return json.dumps(
            {
                "inputs": inputs,
                "recommendations": [rec.to_json() for rec in self.top(top)],
                "excluded": [{"model": e.model, "reason": e.reason, "kind": e.kind} for e in self.excluded],
                "assumptions": list(self.assumptions),
            },
            indent=2,
        )


def sample_strategy(modality: str, plan: Plan) -> dict[str, object]:
    """The strategy keys that say what a sample holds: images and their size (vlm), seconds of audio
    (asr). `automodel estimate` takes them as --images/--image-size and --audio-seconds."""
    if modality == "vlm":
        return {"images": plan.images, "image_size": format_image_size(plan.image_size)}
    if modality == "asr":
        return {"audio_seconds": plan.audio_seconds}
    return {}


def world_sizes(gpus_per_node: int, nodes: int) -> list[int]:
    """Process counts torchrun can lay out on this hardware, smallest first: 1..G on one node, then whole
    nodes (G x 2, G x 3, ...)."""
    return sorted(set(range(1, gpus_per_node + 1)) | {gpus_per_node * k for k in range(1, nodes + 1)})


def _traits(model: ModelSpec, family: FamilySpec) -> set[str]:
    """The use cases the catalog gives a model: its own tags plus its family's strengths."""
    return set(model.use_cases) | set(family.strengths)


def _filter(profile: Profile, model: ModelSpec, family: FamilySpec) -> str | None:
    """Why a model is excluded before any estimate, or None."""
    req = profile.requirements
    if model.params_method == "analytic":
        # The catalog counts these by formula because transformers does not ship their architecture.
        model_type = model.config.get("model_type")
        return f"remote-code architecture ({model_type}): transformers cannot build it, so the trainer cannot fine-tune it"
    if req.commercial_only and not model.commercial_use:
        return f"licence `{model.license}` does not allow commercial use (--commercial)"
    if not req.allow_gated and model.gated:
        return f"{model.hf_id} is gated on the Hub (--no-gated)"
    # Use cases and languages are facts about the checkpoint (its model card): the model's own tags decide.
    # Safety is a family trait (the vendor's safety tuning and tooling): the family's strengths count too.
    tags = set(model.use_cases)
    use_case = profile.task.use_case
    if use_case is not None and use_case not in tags:
        return f"not suited to {use_case} (catalog use cases: {', '.join(sorted(tags))})"
    if req.multilingual and "multilingual" not in tags:
        return "not marked multilingual in the catalog (--multilingual)"
    if req.safety and "safety" not in _traits(model, family):
        return "not marked for safety-critical use in the catalog (--safety)"
    context = model.context_length
    if context and profile.seq_len > context:
        return f"context length {context} tokens is shorter than --seq-len {profile.seq_len}"
    return None


def _methods(profile: Profile) -> list[str]:
    forced = profile.strategy.method
    if forced != "auto":
        return [forced]
    if profile.requirements.priority == "latency":
        return ["lora", "qlora"]
    return ["full", "lora", "qlora"]


# Sequences per optimizer step the written config aims for when the user gives no --global-batch; gradient
# accumulation fills what the micro batches of all ranks leave, and the estimate counts the gradients it
# keeps alive. With more GPUs than that the step simply grows to one micro batch per GPU.
TARGET_GLOBAL_BATCH = 8


def accumulation_steps(micro_batch: int, world_size: int, global_batch: int | None = None) -> int:
    """Micro batches per rank per optimizer step: exactly `global_batch` when given (the caller checked it
    splits), else enough to reach TARGET_GLOBAL_BATCH (at least 1)."""
    if global_batch is not None:
        return max(1, global_batch // (micro_batch * world_size))
    return max(1, math.ceil(TARGET_GLOBAL_BATCH / (micro_batch * world_size)))


@dataclass(frozen=True)
class World:
    """How many GPUs a method's plans use, and, when that is fewer than the user has, why."""

    gpus: int
    why_fewer: str | None = None


def world_for(profile: Profile, method: str) -> World:
    """Every GPU the user has (FSDP2 over gpus x nodes), unless that cannot work: QLoRA runs in one process,
    and an exact --global-batch splits into whole micro batches over only so many ranks."""
    hw, req = profile.hardware, profile.requirements
    total = hw.total_gpus
    if profile.strategy.fsdp_degree:
        return World(profile.strategy.fsdp_degree)
    if method == "qlora":
        # The trainer does not shard 4-bit weights with FSDP2, and the estimator models QLoRA that way.
        why = (f"QLoRA runs in one process (the trainer does not shard 4-bit weights with FSDP2), so it uses 1 "
               f"of the {total} GPUs; LoRA or full fine-tuning would use all of them.") if total > 1 else None
        return World(1, why)
    if req.global_batch is None:
        return World(total)
    per_step = req.global_batch // req.batch  # micro batches per optimizer step (the profile checked it divides)
    gpus = max(w for w in world_sizes(hw.gpus_per_node, hw.nodes) if per_step % w == 0)
    if gpus == total:
        return World(total)
    return World(gpus, f"--global-batch {req.global_batch} at micro batch {req.batch} is {per_step} micro "
                       f"batch(es) per step, which split evenly over at most {gpus} of the {total} GPUs; "
                       f"--global-batch {req.batch * total} (or a multiple) would use all {total}.")


def _plan(profile: Profile, method: str, gpus: int, ckpt: bool) -> Plan:
    return Plan(
        mode="train",
        method=method,  # type: ignore[arg-type]  # one of Method, from _methods
        lora_rank=profile.strategy.lora_rank,
        seq_len=profile.seq_len,
        micro_batch=profile.requirements.batch,
        grad_accum=accumulation_steps(profile.requirements.batch, gpus, profile.requirements.global_batch),
        grad_ckpt=ckpt,
        gpus=gpus,
        images=1 if profile.task.modality == "vlm" else 0,
    )


def _estimate(model: ModelSpec, plan: Plan) -> MemoryEstimate | str:
    try:
        return estimate(model.config, plan, params=model.params)
    except UserError as err:
        return err.message


@dataclass(frozen=True)
class Search:
    """The cheapest fitting plan (or None) and, per method passed over, the numbers that rule it out."""

    plan: Plan | None
    estimate: MemoryEstimate | None
    misses: tuple[Miss, ...]
    world: World | None = None  # the GPUs the found plan uses, and why fewer than all


MIN_USEFUL_SEQ_LEN = 256  # shorter sequences than this are not worth suggesting


def _max_seq_len(model: ModelSpec, plan: Plan, limit: float) -> int | None:
    """The longest sequence (a multiple of 128) at which `plan` fits under `limit`, if at least 256."""
    if plan.seq_len <= MIN_USEFUL_SEQ_LEN:
        return None
    lo, hi = 0, plan.seq_len // 128  # in units of 128 tokens; hi does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        est = _estimate(model, plan.model_copy(update={"seq_len": mid * 128}))
        if isinstance(est, MemoryEstimate) and est.peak_reserved <= limit:
            lo = mid
        else:
            hi = mid
    return lo * 128 if lo * 128 >= MIN_USEFUL_SEQ_LEN else None


def _search(profile: Profile, model: ModelSpec) -> Search:
    """Per method (cheapest memory last), the plan over every GPU it can use: without gradient checkpointing
    first, with it only when that does not fit."""
    limit = headroom_limit(profile.hardware.memory_bytes)
    ckpts = {"auto": [False, True], "on": [True], "off": [False]}[profile.strategy.grad_ckpt]
    misses: list[Miss] = []
    for method in _methods(profile):
        world = world_for(profile, method)
        # The smallest footprint first: if that does not fit, no plan of this method does.
        smallest = _plan(profile, method, world.gpus, ckpts[-1])
        est = _estimate(model, smallest)
        if isinstance(est, str) or est.peak_reserved > limit:
            shorter = None if isinstance(est, str) else _max_seq_len(model, smallest, limit)
            misses.append(Miss(smallest, est, shorter))
            continue
        for ckpt in ckpts[:-1]:
            plan = _plan(profile, method, world.gpus, ckpt)
            found = _estimate(model, plan)
            if isinstance(found, MemoryEstimate) and found.peak_reserved <= limit:
                return Search(plan, found, tuple(misses), world)
        return Search(smallest, est, tuple(misses), world)
    return Search(None, None, tuple(misses))


def _gpus_note(profile: Profile, plan: Plan, world: World) -> str | None:
    """What the plan does with the user's GPUs: the throughput of using them all, or why it uses fewer."""
    hw = profile.hardware
    if world.why_fewer:
        return world.why_fewer
    if plan.gpus == 1:
        return None
    layout = f"{hw.gpus_per_node} per node x {plan.gpus // hw.gpus_per_node} nodes" if plan.gpus > hw.gpus_per_node \
        else f"{plan.gpus} on one node"
    return (f"Uses all {plan.gpus} GPUs ({layout}): FSDP2 shards weights, gradients and optimizer state and each "
            f"GPU runs its own micro batch, so a step processes {plan.gpus * plan.micro_batch} sequences at once: "
            f"up to ~{plan.gpus}x the tokens/s of one GPU (less the all-gather/reduce-scatter traffic).")


def recommend(profile: Profile) -> Recommendations:
    """Rank every catalog model of the task's modality for this profile (all fitting ones, best first)."""
    catalog = load_catalog()
    hw = profile.hardware
    limit = headroom_limit(hw.memory_bytes)
    if profile.task.use_case is not None:
        # A use case the schema allows but no model of this modality offers: a user error, not "nothing fits".
        catalog.check_use_case(profile.task.modality, profile.task.use_case)
    newest = newest_release(profile.task.modality)
    scored: list[tuple[float, int, int, Recommendation]] = []
    excluded: list[Exclusion] = []
    # Every model sits in its family (the schema checks `model.family == family.name`), so walk them together.
    for family, model in ((f, m) for f in catalog.families for m in f.models):
        if model.modality != profile.task.modality:
            continue
        if profile.task.models is not None and model.name not in profile.task.models:
            continue
        why = _filter(profile, model, family)
        if why is not None:
            excluded.append(Exclusion(model.name, why, kind="requirement"))
            continue
        found = _search(profile, model)
        if found.plan is None or found.estimate is None:
            excluded.append(Exclusion(model.name, too_big(profile, found.misses, limit)))
            continue
        plan, est = found.plan, found.estimate
        tokens = profile.requirements.dataset_tokens
        seconds = train_seconds(model, plan, tokens, hw.bf16_tflops) if tokens else None
        gpn = min(plan.gpus, hw.gpus_per_node)
        rec = Recommendation(
            rank=0,
            model=model,
            plan=plan,
            estimate=est,
            gpus_per_node=gpn,
            nodes=math.ceil(plan.gpus / gpn),
            gpu_mem_bytes=hw.memory_bytes,
            score=score(profile, model, family, plan.method, newest),
            reasons=reasons(profile, model, family, plan, est, found.misses, seconds, limit,
                            _gpus_note(profile, plan, found.world or World(plan.gpus))),
            summary=summary(profile, model, family, plan, found.misses),
            train_seconds=seconds,
        )
        scored.append((rec.score, model.released_month, model.params, rec))
    # Best score first; ties go to the newer checkpoint, then the bigger model, then the later name
    # (-instruct after the base), which in the catalog's naming is the tuned checkpoint.
    scored.sort(key=lambda item: (item[0], item[1], item[2], item[3].model.name), reverse=True)
    ranked = tuple(
        Recommendation(**{**rec.__dict__, "rank": i + 1}) for i, (*_, rec) in enumerate(scored)
    )
    return Recommendations(profile=profile, recommendations=ranked, excluded=tuple(excluded))
