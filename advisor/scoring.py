"""How a fitting model is scored (0-100) and how long its training takes.

Pure arithmetic over the catalog's facts and the profile, kept apart from the strategy search in
`rank.py` so the weights can be read (and argued about) in one place. The score is

    100 * (wq*quality + wl*latency + wb*band + wf*fit + wm*method + wr*recency)

with the weights per priority in `WEIGHTS` (each row sums to 1) and every term in 0..1:

- quality: log of the parameter count (0.3B -> 0, 100B -> 1); an MoE counts as the geometric mean of
  its total and active sizes;
- latency: the same scale on the active parameters, reversed (smaller is faster);
- balanced size band: a Gaussian in log2(size) around the model whose bf16 weights fill half of all
  the GPU memory given (sigma 1.5 doublings);
- fit: with --use-case, 1.0 for a specialist made for it (tagged for it, no `chat` tag) from a family that
  lists it as a strength, 0.85 for a general assistant from such a family, 0.5 otherwise; without
  one, the "general" fit from the checkpoint's own tags: 1.0 for a general assistant (tagged `chat`; for
  speech, `transcription`), 0.5 for a specialist (e.g. tagged only `code` and `reasoning`, or `code` and
  `instruction`: a code-instruct model follows instructions about code, it is no general assistant);
  either way halved for a pretrained base checkpoint (`instruction_tuned: false`), which starts further
  from a chat or instruction model than its instruct sibling;
- method: full > LoRA > QLoRA, with QLoRA only a fallback unless quality is the priority;
- recency: 1 - (months between the checkpoint's release and the newest release of its modality in the
  catalog) / 48, floored at 0. With wr = 0.10, a year newer is worth 2.5 points: about a third of a size
  doubling under the quality priority (a doubling is 0.12 quality, 7 points), so a newer generation wins
  at comparable size and fit, while a clearly bigger or better-fitting model still wins over a newer one.
"""

from __future__ import annotations

import math

from automodel.advisor.profile import Profile
from automodel.catalog.memory.plan import Plan
from automodel.catalog.registry import load_catalog
from automodel.catalog.schema import FamilySpec, ModelSpec

# Model FLOP utilisation assumed for time estimates: 40 % of the dense bf16 peak for bf16 training;
# QLoRA dequantises every NF4 weight before each matmul, so 30 %.
MFU = {"full": 0.40, "lora": 0.40, "qlora": 0.30}
# Full fine-tuning adapts every weight. QLoRA trains on a 4-bit base: close to 16-bit LoRA in quality
# (Dettmers et al. 2023), so a quality pick happily takes a bigger model with it, but its steps are slower
# and it needs bitsandbytes, so balanced and latency picks use it only when nothing bf16 fits.
METHOD_SCORE: dict[str, dict[str, float]] = {
    "quality": {"full": 1.0, "lora": 0.9, "qlora": 0.7},
    "balanced": {"full": 1.0, "lora": 0.8, "qlora": 0.1},
    "latency": {"full": 1.0, "lora": 0.8, "qlora": 0.1},
}
# Score weights per priority before recency: (quality, latency, balanced-size band, use-case fit, method).
BASE_WEIGHTS: dict[str, tuple[float, float, float, float, float]] = {
    "balanced": (0.15, 0.0, 0.40, 0.15, 0.30),
    "quality": (0.65, 0.0, 0.0, 0.20, 0.15),
    "latency": (0.0, 0.60, 0.0, 0.20, 0.20),
}
# Recency takes a tenth of every priority; the other terms keep their proportions (x0.9), so the
# priorities still trade size, speed and method exactly as before.
RECENCY_WEIGHT = 0.10
RECENCY_HORIZON_MONTHS = 48
WEIGHTS: dict[str, tuple[float, float, float, float, float, float]] = {
    priority: (*(w * (1 - RECENCY_WEIGHT) for w in base), RECENCY_WEIGHT)  # type: ignore[misc]
    for priority, base in BASE_WEIGHTS.items()
}
# Fit without --use-case, from the checkpoint's tags: general assistants (chat; for speech, transcription)
# score full fit, specialists the same 0.5 a model gets for a stated use case outside its strengths.
GENERAL_USE_CASES = frozenset({"chat", "transcription"})
SPECIALIST_FIT = 0.5
# A pretrained base checkpoint has no instruction or chat tuning: fine-tuning it for chat or instructions
# starts further from the goal than its instruct sibling (same size, same data), so its fit is halved.
# Speech models have no such split (their checkpoints are not instruction-tuned at all).
BASE_CHECKPOINT_FACTOR = 0.5
# With --use-case, a general assistant from a family strong at it fits a little less than a specialist made
# for it: at equal size and age the code model wins a code request (2 points under balanced).
GENERALIST_STRENGTH_FIT = 0.85


# A balanced pick aims at the model whose bf16 weights fill about half of all the GPU memory given
# (2 bytes per parameter): big enough to use the hardware, small enough to train without quantising.
BALANCED_WEIGHT_SHARE = 0.5
BAND_SIGMA_DOUBLINGS = 1.5


def active_params(model: ModelSpec) -> int:
    return model.active_params or model.params


def size_terms(model: ModelSpec, ideal: float) -> tuple[float, float, float]:
    """(quality, latency, balanced band), each in 0..1, from the parameter counts."""
    active = active_params(model)
    effective = math.sqrt(model.params * active)  # an MoE is about as good as the geometric mean of its sizes
    quality = min(1.0, max(0.0, (math.log10(effective) - 8.5) / 2.5))
    latency = 1.0 - min(1.0, max(0.0, (math.log10(active) - 8.5) / 2.5))
    band = math.exp(-(math.log2(effective / ideal) ** 2) / (2 * BAND_SIGMA_DOUBLINGS**2))
    return quality, latency, band


def ideal_params(profile: Profile) -> float:
    """The size a balanced pick aims at for this hardware (at least 0.5B)."""
    hw = profile.hardware
    return max(5e8, BALANCED_WEIGHT_SHARE * hw.memory_bytes * hw.total_gpus / 2)


def base_factor(model: ModelSpec) -> float:
    """1.0 for an instruction-tuned checkpoint, BASE_CHECKPOINT_FACTOR for a pretrained base one."""
    return 1.0 if model.instruction_tuned else BASE_CHECKPOINT_FACTOR


def use_case_fit(profile: Profile, family: FamilySpec | None, model: ModelSpec) -> float:
    """Fit for the stated --use-case (0.5, neutral, without one: `general_fit` covers that case), halved for
    a base checkpoint."""
    use_case = profile.task.use_case
    if use_case is None or family is None:
        return 0.5
    if use_case not in family.strengths:
        fit = 0.5
    elif not GENERAL_USE_CASES.intersection(model.use_cases):
        fit = 1.0  # a specialist made for it (Qwen2.5-Coder, Code Llama for code) from a family strong at it
    else:
        fit = GENERALIST_STRENGTH_FIT
    return fit * base_factor(model)


def general_fit(model: ModelSpec) -> float:
    """Fit for a request without --use-case: general assistants first, specialists after, a base
    checkpoint below its instruct sibling."""
    fit = 1.0 if GENERAL_USE_CASES.intersection(model.use_cases) else SPECIALIST_FIT
    return fit * base_factor(model)


def newest_release(modality: str) -> int:
    """The latest `released_month` among the catalog's models of this modality."""
    return max(m.released_month for m in load_catalog().models if m.modality == modality)


def recency(model: ModelSpec, newest: int) -> float:
    """1.0 for the newest checkpoint of the modality, 0.25 less per year older, at least 0."""
    return max(0.0, 1.0 - (newest - model.released_month) / RECENCY_HORIZON_MONTHS)


def score(
    profile: Profile, model: ModelSpec, family: FamilySpec | None, method: str, newest: int | None = None
) -> float:
    """The 0-100 score; `newest` is the newest release month of the modality (from the catalog if None)."""
    priority = profile.requirements.priority
    wq, wl, wb, wf, wm, wr = WEIGHTS[priority]
    quality, latency, band = size_terms(model, ideal_params(profile))
    fit = use_case_fit(profile, family, model) if profile.task.use_case else general_fit(model)
    latest = newest_release(model.modality) if newest is None else newest
    total = (
        wq * quality
        + wl * latency
        + wb * band
        + wf * fit
        + wm * METHOD_SCORE[priority][method]
        + wr * recency(model, latest)
    )
    return round(100 * total, 1)


def train_seconds(model: ModelSpec, plan: Plan, tokens: int, bf16_tflops: float | None) -> float | None:
    """Wall time for `tokens` training tokens: FLOPs per token 6N (full) or 4N (LoRA/QLoRA: no weight
    gradients for the frozen base), +2N with gradient checkpointing, over GPUs x bf16 peak x MFU.
    None without a bf16 peak."""
    if bf16_tflops is None:
        return None
    n = active_params(model)
    per_token = (6 if plan.method == "full" else 4) * n + (2 * n if plan.grad_ckpt else 0)
    return tokens * per_token / (plan.gpus * bf16_tflops * 1e12 * MFU[plan.method])
