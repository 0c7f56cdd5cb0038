"""How a fitting model is scored (0-100) and how long its training takes.

Pure arithmetic over the catalog's facts and the profile, kept apart from the strategy search in
`rank.py` so the weights can be read (and argued about) in one place:

- quality: log of the parameter count (0.3B -> 0, 100B -> 1); an MoE counts as the geometric mean of
  its total and active sizes;
- latency: the same scale on the active parameters, reversed (smaller is faster);
- balanced size band: a Gaussian in log2(size) around the model whose bf16 weights fill half of all
  the GPU memory given (sigma 1.5 doublings);
- use-case fit: 1.0 when the family lists the use case as a strength, 0.5 otherwise;
- method: full > LoRA > QLoRA, with QLoRA only a fallback unless quality is the priority.
"""

from __future__ import annotations

import math

from automodel.advisor.profile import Profile
from automodel.catalog.memory.plan import Plan
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
# Score weights per priority: (quality, latency, balanced-size band, use-case fit, method).
WEIGHTS: dict[str, tuple[float, float, float, float, float]] = {
    "balanced": (0.15, 0.0, 0.40, 0.15, 0.30),
    "quality": (0.65, 0.0, 0.0, 0.20, 0.15),
    "latency": (0.0, 0.60, 0.0, 0.20, 0.20),
}
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


def use_case_fit(profile: Profile, family: FamilySpec | None) -> float:
    use_case = profile.task.use_case
    if use_case is None or family is None:
        return 0.5
    return 1.0 if use_case in family.strengths else 0.5


def score(profile: Profile, model: ModelSpec, family: FamilySpec | None, method: str) -> float:
    priority = profile.requirements.priority
    wq, wl, wb, wf, wm = WEIGHTS[priority]
    quality, latency, band = size_terms(model, ideal_params(profile))
    total = (
        wq * quality
        + wl * latency
        + wb * band
        + wf * use_case_fit(profile, family)
        + wm * METHOD_SCORE[priority][method]
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
