"""The explanation sentences: pinned, since users and --json read them."""

from __future__ import annotations

from automodel.advisor.explain import Miss, describe, limit_text, method_text
from automodel.catalog.memory.plan import Plan

GIB = 2**30


def test_describe_names_method_rank_shape_and_placement() -> None:
    lora = Plan(method="lora", lora_rank=16, seq_len=2048, micro_batch=1, grad_ckpt=True, gpus=1)
    assert describe(lora) == "LoRA r16 at 2048 tokens x 1 (grad ckpt, 1 GPU)"
    full = lora.model_copy(update={"method": "full", "grad_ckpt": False, "gpus": 8, "micro_batch": 2})
    assert method_text(full) == "full fine-tuning"
    assert describe(full) == "full fine-tuning at 2048 tokens x 2 (no grad ckpt, FSDP2 over 8 GPUs)"


def test_limit_text_gives_the_budget_and_its_share() -> None:
    assert limit_text(0.9 * 24 * GIB, 24 * GIB) == "limit 21.6 at 90%"


def test_a_miss_that_cannot_be_estimated_says_why() -> None:
    miss = Miss(Plan(method="qlora"), "no 4-bit kernels for this architecture")
    assert miss.needs() == "QLoRA cannot be estimated: no 4-bit kernels for this architecture"
    assert miss.passed_over() == miss.needs() + "."
