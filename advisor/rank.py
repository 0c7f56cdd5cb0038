"""The ranking engine: `recommend(profile) -> Recommendations`, pure and torch-free.

For every catalog model of the task's modality it applies the user's filters, then looks for the
cheapest strategy that fits one GPU of the stated size, using the analytic memory estimator:

- methods, in order: full fine-tuning (only when quality matters: priority balanced or quality),
  LoRA, QLoRA; a forced `--method` tries only that one;
- within a method, gradient checkpointing and then more GPUs (FSDP2 shards weights, gradients and
  optimizer state) are switched on only when the smaller setup does not fit;
- headroom policy: a plan fits when its estimated peak *reserved* memory (what nvidia-smi shows,
  allocator reserve and CUDA context included) is at most `HEADROOM` (90 %) of one GPU's memory.

Fitting models are scored (0-100) from use-case fit, quality (size, family strengths), latency
(smaller is faster) and the method (full > LoRA > QLoRA); the weights depend on the priority, so
`quality` moves the answer to bigger models and `latency` to smaller ones. Every pick and every
exclusion says why, with numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from automodel.advisor.profile import Profile
from automodel.catalog.errors import UserError
from automodel.catalog.memory.estimate import estimate
from automodel.catalog.memory.plan import MemoryEstimate, Plan
from automodel.catalog.registry import load_catalog

GIB = 2**30
HEADROOM = 0.90
# Model FLOP utilisation assumed for time estimates: 40 % of the dense bf16 peak for bf16 training;
# QLoRA dequantises every NF4 weight before each matmul, so 30 %.
MFU = {"full": 0.40, "lora": 0.40, "qlora": 0.30}
METHOD_LABEL = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
METHOD_SHORT = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA"}
# Full fine-tuning adapts every weight. QLoRA trains on a 4-bit base: close to 16-bit LoRA in quality
# (Dettmers et al. 2023), so a quality pick happily takes a bigger model with it, but its steps are slower
# and it needs bitsandbytes, so balanced and latency picks use it only when nothing bf16 fits.
METHOD_SCORE: dict[str, dict[str, float]] = {
    "quality": {"full": 1.0, "lora": 0.9, "qlora": 0.7},
    "balanced": {"full": 1.0, "lora": 0.8, "qlora": 0.1},
    "latency": {"full": 1.0, "lora": 0.8, "qlora": 0.1},
}
QLORA_NOTE = "QLoRA needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes)."
# Score weights per priority: (quality, latency, balanced-size band, use-case fit, method).
WEIGHTS: dict[str, tuple[float, float, float, float, float]] = {
    "balanced": (0.15, 0.0, 0.40, 0.15, 0.30),
    "quality": (0.65, 0.0, 0.0, 0.20, 0.15),
    "latency": (0.0, 0.60, 0.0, 0.20, 0.20),
}
# A balanced pick aims at the model whose bf16 weights fill about half of all the GPU memory given
# (2 bytes per parameter): big enough to use the hardware, small enough to train without quantising.
BALANCED_WEIGHT_SHARE = 0.5
ASSUMPTIONS: tuple[str, ...] = (
    f"a plan fits when its estimated peak reserved memory is at most {HEADROOM:.0%} of one GPU's memory",
    "gradient checkpointing and extra GPUs (FSDP2 sharding) are switched on only when needed",
    "training FLOPs per token: full 6*N, LoRA/QLoRA 4*N (no weight gradients for the frozen base), "
    "+2*N with gradient checkpointing (one more forward); N = active parameters",
    f"training time at {MFU['full']:.0%} MFU of the GPU's dense bf16 peak ({MFU['qlora']:.0%} for QLoRA)",
)


@dataclass(frozen=True)
class Exclusion:
    model: str
    reason: str


@dataclass(frozen=True)
class Recommendation:
    """One fitting model, the plan it was estimated with, and why it ranks where it does."""

    rank: int
    model: object  # catalog ModelSpec
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
            "model": m.name,  # type: ignore[attr-defined]
            "hf_id": m.hf_id,  # type: ignore[attr-defined]
            "family": m.family,  # type: ignore[attr-defined]
            "modality": m.modality,  # type: ignore[attr-defined]
            "params": m.params,  # type: ignore[attr-defined]
            "strategy": {
                "method": self.plan.method,
                "lora_rank": self.plan.lora_rank if self.plan.method != "full" else None,
                "precision": self.plan.precision,
                "grad_ckpt": self.plan.grad_ckpt,
                "gpus": self.gpus_per_node,
                "nodes": self.nodes,
                "micro_batch": self.plan.micro_batch,
                "seq_len": self.plan.seq_len,
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


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f}"


def fsdp_degrees(gpus_per_node: int, nodes: int) -> list[int]:
    """GPU counts to try, smallest first: powers of two within a node, a full node, then whole nodes."""
    degrees = {d for d in (2**i for i in range(12)) if d <= gpus_per_node} | {gpus_per_node}
    degrees |= {gpus_per_node * k for k in range(1, nodes + 1)}
    return sorted(degrees)


def _families() -> dict[str, object]:
    families = load_catalog().families
    items = families.values() if isinstance(families, dict) else families
    return {f.name: f for f in items}


def _traits(model: object, family: object | None) -> set[str]:
    """The use cases the catalog gives a model: its own tags plus its family's strengths."""
    return set(model.use_cases) | set(getattr(family, "strengths", ()))  # type: ignore[attr-defined]


def _filter(profile: Profile, model: object, family: object | None) -> str | None:
    """Why a model is excluded before any estimate, or None."""
    req = profile.requirements
    if model.params_method == "analytic":  # type: ignore[attr-defined]
        # The catalog counts these by formula because transformers does not ship their architecture.
        model_type = model.config.get("model_type")  # type: ignore[attr-defined]
        return f"remote-code architecture ({model_type}): transformers cannot build it, so the trainer cannot fine-tune it"
    if req.commercial_only and not model.commercial_use:  # type: ignore[attr-defined]
        return f"licence `{model.license}` does not allow commercial use (--commercial)"  # type: ignore[attr-defined]
    if not req.allow_gated and model.gated:  # type: ignore[attr-defined]
        return f"{model.hf_id} is gated on the Hub (--no-gated)"  # type: ignore[attr-defined]
    # Use cases and languages are facts about the checkpoint (its model card): the model's own tags decide.
    # Safety is a family trait (the vendor's safety tuning and tooling): the family's strengths count too.
    tags = set(model.use_cases)  # type: ignore[attr-defined]
    use_case = profile.task.use_case
    if use_case is not None and use_case not in tags:
        return f"not suited to {use_case} (catalog use cases: {', '.join(sorted(tags))})"
    if req.multilingual and "multilingual" not in tags:
        return "not marked multilingual in the catalog (--multilingual)"
    if req.safety and "safety" not in _traits(model, family):
        return "not marked for safety-critical use in the catalog (--safety)"
    context = model.context_length  # type: ignore[attr-defined]
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


def _plan(profile: Profile, method: str, gpus: int, ckpt: bool) -> Plan:
    return Plan(
        mode="train",
        method=method,  # type: ignore[arg-type]
        lora_rank=profile.strategy.lora_rank,
        seq_len=profile.seq_len,
        micro_batch=profile.requirements.batch,
        grad_ckpt=ckpt,
        gpus=gpus,
        images=1 if profile.task.modality == "vlm" else 0,
    )


def _estimate(model: object, plan: Plan) -> MemoryEstimate | str:
    try:
        return estimate(model.config, plan, engine="analytic", params=model.params)  # type: ignore[attr-defined]
    except UserError as err:
        return err.message


def _describe(plan: Plan) -> str:
    """`LoRA r16 at 2048 tokens x 1 (grad ckpt, 1 GPU)`."""
    method = METHOD_LABEL[plan.method] + (f" r{plan.lora_rank}" if plan.method != "full" else "")
    where = f"FSDP2 over {plan.gpus} GPUs" if plan.gpus > 1 else "1 GPU"
    ckpt = "grad ckpt" if plan.grad_ckpt else "no grad ckpt"
    return f"{method} at {plan.seq_len} tokens x {plan.micro_batch} ({ckpt}, {where})"


@dataclass(frozen=True)
class Search:
    """The cheapest fitting plan (or None) and, per method passed over, the numbers that rule it out."""

    plan: Plan | None
    estimate: MemoryEstimate | None
    misses: tuple[Miss, ...]


@dataclass(frozen=True)
class Miss:
    """A method ruled out: its smallest plan and what that needs (or why it cannot run)."""

    plan: Plan
    need: MemoryEstimate | str
    max_seq_len: int | None = None  # the longest sequence this plan fits at, when that is still useful

    def _shorter(self) -> str:
        return f" (it fits at --seq-len {self.max_seq_len})" if self.max_seq_len else ""

    def needs(self) -> str:
        if isinstance(self.need, str):
            return f"{METHOD_LABEL[self.plan.method]} cannot be estimated: {self.need}"
        return f"needs {gib(self.need.peak_reserved)} GiB per GPU with {_describe(self.plan)}{self._shorter()}"

    def passed_over(self) -> str:
        if isinstance(self.need, str):
            return self.needs() + "."
        return (f"Not {METHOD_LABEL[self.plan.method]}: it would need {gib(self.need.peak_reserved)} GiB per GPU "
                f"even {'with grad ckpt ' if self.plan.grad_ckpt else ''}on {self.plan.gpus} GPU(s){self._shorter()}.")


MIN_USEFUL_SEQ_LEN = 256  # shorter sequences than this are not worth suggesting


def _max_seq_len(model: object, plan: Plan, limit: float) -> int | None:
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


def _search(profile: Profile, model: object) -> Search:
    hw, pref = profile.hardware, profile.strategy
    limit = HEADROOM * hw.memory_bytes
    degrees = [pref.fsdp_degree] if pref.fsdp_degree else fsdp_degrees(hw.gpus_per_node, hw.nodes)
    ckpts = {"auto": [False, True], "on": [True], "off": [False]}[pref.grad_ckpt]
    misses: list[Miss] = []
    for method in _methods(profile):
        # The smallest footprint first: if that does not fit, no plan of this method does.
        smallest = _plan(profile, method, degrees[-1], ckpts[-1])
        est = _estimate(model, smallest)
        if isinstance(est, str) or est.peak_reserved > limit:
            shorter = None if isinstance(est, str) else _max_seq_len(model, smallest, limit)
            misses.append(Miss(smallest, est, shorter))
            continue
        for gpus in degrees:
            for ckpt in ckpts:
                last = (gpus, ckpt) == (degrees[-1], ckpts[-1])
                plan = smallest if last else _plan(profile, method, gpus, ckpt)
                found = est if last else _estimate(model, plan)
                if isinstance(found, MemoryEstimate) and found.peak_reserved <= limit:
                    return Search(plan, found, tuple(misses))
    return Search(None, None, tuple(misses))


def _size_terms(model: object, ideal: float) -> tuple[float, float, float]:
    """(quality, latency, balanced band) in 0..1 from the parameter counts."""
    total = model.params  # type: ignore[attr-defined]
    active = getattr(model, "active_params", None) or total
    effective = math.sqrt(total * active)  # an MoE is about as good as the geometric mean of its sizes
    quality = min(1.0, max(0.0, (math.log10(effective) - 8.5) / 2.5))  # 0.3B -> 0, 100B -> 1
    latency = 1.0 - min(1.0, max(0.0, (math.log10(active) - 8.5) / 2.5))
    band = math.exp(-(math.log2(effective / ideal) ** 2) / (2 * 1.5**2))
    return quality, latency, band


def _ideal(profile: Profile) -> float:
    hw = profile.hardware
    return max(5e8, BALANCED_WEIGHT_SHARE * hw.memory_bytes * hw.total_gpus / 2)


def _fit(profile: Profile, model: object, family: object | None) -> float:
    use_case = profile.task.use_case
    if use_case is None:
        return 0.5
    strengths = {s.lower() for s in getattr(family, "strengths", ())}
    return 1.0 if use_case in strengths else 0.5


def score(profile: Profile, model: object, family: object | None, method: str) -> float:
    wq, wl, wb, wf, wm = WEIGHTS[profile.requirements.priority]
    quality, latency, band = _size_terms(model, _ideal(profile))
    total = wq * quality + wl * latency + wb * band + wf * _fit(profile, model, family) + wm * METHOD_SCORE[profile.requirements.priority][method]
    return round(100 * total, 1)


def train_seconds(model: object, plan: Plan, tokens: int, bf16_tflops: float | None) -> float | None:
    """Wall time for `tokens` training tokens, from FLOPs at the stated MFU; None without a GPU peak."""
    if bf16_tflops is None:
        return None
    active = getattr(model, "active_params", None) or model.params  # type: ignore[attr-defined]
    per_token = (6 if plan.method == "full" else 4) * active + (2 * active if plan.grad_ckpt else 0)
    return tokens * per_token / (plan.gpus * bf16_tflops * 1e12 * MFU[plan.method])


def _reasons(
    profile: Profile, model: object, family: object | None, plan: Plan, est: MemoryEstimate, misses: tuple[Miss, ...]
) -> tuple[str, ...]:
    """The pick in a sentence or two: what fits and how, why this method, what speaks for the model."""
    hw = profile.hardware
    reasons = [
        f"Fits as {_describe(plan)}: {gib(est.peak_reserved)} of {gib(hw.memory_bytes)} GiB per GPU "
        f"(limit {gib(HEADROOM * hw.memory_bytes)} at {HEADROOM:.0%})."
    ]
    reasons.extend(miss.passed_over() for miss in misses)
    use_case, priority = profile.task.use_case, profile.requirements.priority
    strengths = set(getattr(family, "strengths", ()))
    title = getattr(family, "title", model.family)  # type: ignore[attr-defined]
    if use_case and use_case in strengths:
        reasons.append(f"{title} is strong at {use_case}.")
    size = f"{model.params / 1e9:.1f}B"  # type: ignore[attr-defined]
    if priority == "quality":
        reasons.append(f"{size} params: quality priority favours the biggest model that fits.")
    elif priority == "latency":
        reasons.append(f"{size} params: latency priority favours small, fast models.")
    else:
        reasons.append(f"{size} params: balanced priority aims at ~{_ideal(profile) / 1e9:.0f}B for this hardware.")
    if plan.method == "qlora":
        reasons.append(QLORA_NOTE)
    tokens = profile.requirements.dataset_tokens
    if tokens:
        seconds = train_seconds(model, plan, tokens, hw.bf16_tflops)
        if seconds is None and hw.gpu is not None:
            reasons.append(f"No training-time estimate: the catalog has no bf16 peak for {hw.gpu} (no native bf16).")
        elif seconds is None:
            reasons.append("Give --gpu NAME for a training-time estimate (it needs the GPU's bf16 peak).")
        else:
            reasons.append(
                f"~{seconds / 3600:.1f} h for {tokens / 1e6:,.0f}M tokens on {plan.gpus} GPU(s) "
                f"at {MFU[plan.method]:.0%} MFU."
            )
    return tuple(reasons)


def _summary(profile: Profile, family: object | None, plan: Plan, misses: tuple[Miss, ...]) -> str:
    """`full FT needs 148 GiB; strong at chat; ~9.6 h` for the table."""
    parts = []
    for miss in misses:
        if isinstance(miss.need, MemoryEstimate):
            parts.append(f"{METHOD_SHORT[miss.plan.method]} needs {miss.need.peak_reserved / GIB:.0f} GiB")
    use_case = profile.task.use_case
    if use_case and use_case in set(getattr(family, "strengths", ())):
        parts.append(f"strong at {use_case}")
    if plan.method == "qlora":
        parts.append("needs CUDA + bitsandbytes")
    return "; ".join(parts) or f"{METHOD_SHORT[plan.method]} fits"


def recommend(profile: Profile) -> Recommendations:
    """Rank every catalog model of the task's modality for this profile (all fitting ones, best first)."""
    catalog, families = load_catalog(), _families()
    hw = profile.hardware
    scored: list[tuple[float, int, Recommendation]] = []
    excluded: list[Exclusion] = []
    for model in catalog.models:
        if model.modality != profile.task.modality:
            continue
        family = families.get(model.family)
        why = _filter(profile, model, family)
        if why is not None:
            excluded.append(Exclusion(model.name, why))
            continue
        found = _search(profile, model)
        if found.plan is None or found.estimate is None:
            excluded.append(Exclusion(model.name, _too_big(profile, found.misses)))
            continue
        plan, est = found.plan, found.estimate
        gpn = min(plan.gpus, hw.gpus_per_node)
        rec = Recommendation(
            rank=0,
            model=model,
            plan=plan,
            estimate=est,
            gpus_per_node=gpn,
            nodes=math.ceil(plan.gpus / gpn),
            gpu_mem_bytes=hw.memory_bytes,
            score=score(profile, model, family, plan.method),
            reasons=_reasons(profile, model, family, plan, est, found.misses),
            summary=_summary(profile, family, plan, found.misses),
            train_seconds=(
                train_seconds(model, plan, profile.requirements.dataset_tokens, hw.bf16_tflops)
                if profile.requirements.dataset_tokens
                else None
            ),
        )
        scored.append((rec.score, model.params, rec))
    # Best score first; ties go to the bigger model, then to the later name (qwen2.5 after qwen2,
    # -instruct after the base), which in the catalog's naming is the newer or tuned checkpoint.
    scored.sort(key=lambda item: (item[0], item[1], item[2].model.name), reverse=True)
    ranked = tuple(
        Recommendation(**{**rec.__dict__, "rank": i + 1}) for i, (*_, rec) in enumerate(scored)
    )
    return Recommendations(profile=profile, recommendations=ranked, excluded=tuple(excluded))


def _too_big(profile: Profile, misses: tuple[Miss, ...]) -> str:
    """The smallest plan's need (the last method tried) against what the user has."""
    hw = profile.hardware
    have = f"you have {gib(hw.memory_bytes)} (limit {gib(HEADROOM * hw.memory_bytes)} at {HEADROOM:.0%})"
    return f"{misses[-1].needs()}; {have}" if misses else f"no training method was tried; {have}"
