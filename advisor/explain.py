"""The advisor's explanations: the text that says why a model was picked, passed over or excluded.

`rank.py` decides (filters, plan search, scores) and hands the numbers here; nothing in this module
estimates or ranks. `limit` is the per-GPU byte budget rank checks against (HEADROOM x GPU memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from automodel.advisor.profile import Profile
from automodel.advisor.scoring import MFU, general_fit, ideal_params
from automodel.catalog.memory.plan import MemoryEstimate, Plan
from automodel.catalog.schema import FamilySpec, ModelSpec

GIB = 2**30
METHOD_LABEL = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
METHOD_SHORT = {"full": "full FT", "lora": "LoRA", "qlora": "QLoRA"}
QLORA_NOTE = ("QLoRA needs the bitsandbytes package (pip install bitsandbytes) and trains on a CUDA GPU "
              "(on a CPU it runs, slowly, for testing only).")


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f}"


def limit_text(limit: float, memory_bytes: int) -> str:
    """`limit 21.6 at 90%`."""
    return f"limit {gib(limit)} at {limit / memory_bytes:.0%}"


def method_text(plan: Plan) -> str:
    """`LoRA r16`, `full fine-tuning`."""
    return METHOD_LABEL[plan.method] + (f" r{plan.lora_rank}" if plan.method != "full" else "")


def describe(plan: Plan) -> str:
    """`LoRA r16 at 2048 tokens x 1 (grad ckpt, 1 GPU)`."""
    method = method_text(plan)
    where = f"FSDP2 over {plan.gpus} GPUs" if plan.gpus > 1 else "1 GPU"
    ckpt = "grad ckpt" if plan.grad_ckpt else "no grad ckpt"
    return f"{method} at {plan.seq_len} tokens x {plan.micro_batch} ({ckpt}, {where})"


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
        return f"needs {gib(self.need.peak_reserved)} GiB per GPU with {describe(self.plan)}{self._shorter()}"

    def passed_over(self) -> str:
        if isinstance(self.need, str):
            return self.needs() + "."
        return (f"Not {METHOD_LABEL[self.plan.method]}: it would need {gib(self.need.peak_reserved)} GiB per GPU "
                f"even {'with grad ckpt ' if self.plan.grad_ckpt else ''}on {self.plan.gpus} GPU(s){self._shorter()}.")


def reasons(
    profile: Profile,
    model: ModelSpec,
    family: FamilySpec,
    plan: Plan,
    est: MemoryEstimate,
    misses: tuple[Miss, ...],
    seconds: float | None,
    limit: float,
    spare: str | None,
) -> tuple[str, ...]:
    """The pick in a sentence or two: what fits and how, why this method, what speaks for the model."""
    hw = profile.hardware
    reasons = [
        f"Fits as {describe(plan)}: {gib(est.peak_reserved)} of {gib(hw.memory_bytes)} GiB per GPU "
        f"({limit_text(limit, hw.memory_bytes)})."
    ]
    reasons.extend(miss.passed_over() for miss in misses)
    if spare:
        reasons.append(spare)
    use_case, priority = profile.task.use_case, profile.requirements.priority
    if use_case and use_case in family.strengths:
        reasons.append(f"{family.title} is strong at {use_case}.")
    if not model.instruction_tuned:
        reasons.append("A pretrained base checkpoint (no instruction or chat tuning): an instruction-tuned model "
                       "of its size (its -instruct sibling where the catalog has one) ranks ahead of it.")
    elif use_case is None and general_fit(model) < 1.0:
        reasons.append(f"A specialist (catalog use cases: {', '.join(model.use_cases)}): without --use-case, "
                       "general assistants rank ahead of it.")
    size = f"{model.params / 1e9:.1f}B"
    if priority == "quality":
        reasons.append(f"{size} params: quality priority favours the biggest model that fits.")
    elif priority == "latency":
        reasons.append(f"{size} params: latency priority favours small, fast models.")
    else:
        reasons.append(f"{size} params: balanced priority aims at ~{ideal_params(profile) / 1e9:.0f}B for this hardware.")
    if plan.method == "qlora":
        reasons.append(QLORA_NOTE)
    tokens = profile.requirements.dataset_tokens
    if tokens:
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


def summary(profile: Profile, model: ModelSpec, family: FamilySpec, plan: Plan, misses: tuple[Miss, ...]) -> str:
    """`full FT needs 148 GiB; strong at chat; ~9.6 h` for the table."""
    parts = []
    for miss in misses:
        if isinstance(miss.need, MemoryEstimate):
            parts.append(f"{METHOD_SHORT[miss.plan.method]} needs {miss.need.peak_reserved / GIB:.0f} GiB")
    use_case = profile.task.use_case
    if use_case and use_case in family.strengths:
        parts.append(f"strong at {use_case}")
    if not model.instruction_tuned:
        parts.append("base checkpoint")
    elif use_case is None and general_fit(model) < 1.0:
        parts.append(f"specialist ({', '.join(model.use_cases)})")
    if plan.method == "qlora":
        parts.append("needs bitsandbytes")
    return "; ".join(parts) or f"{METHOD_SHORT[plan.method]} fits"


def too_big(profile: Profile, misses: tuple[Miss, ...], limit: float) -> str:
    """The smallest plan's need (the last method tried) against what the user has."""
    hw = profile.hardware
    have = f"you have {gib(hw.memory_bytes)} ({limit_text(limit, hw.memory_bytes)})"
    return f"{misses[-1].needs()}; {have}" if misses else f"no training method was tried; {have}"
