"""Scoring terms: monotone in the directions the priorities promise, bounded, MoE-aware."""

from __future__ import annotations

import pytest

from automodel.advisor.profile import Hardware, Profile, Requirements, Task
from automodel.advisor.scoring import ideal_params, score, size_terms, use_case_fit
from automodel.catalog.registry import find_model, load_catalog

GIB = 2**30


def profile(priority: str = "balanced", mem_gib: int = 24, gpus: int = 1, use_case: str | None = None) -> Profile:
    return Profile(task=Task(modality="llm", use_case=use_case),
                   hardware=Hardware(memory_bytes=mem_gib * GIB, gpus_per_node=gpus),
                   requirements=Requirements(priority=priority))


def test_size_terms_are_bounded_and_monotone() -> None:
    models = sorted((m for m in load_catalog().models if not m.active_params), key=lambda m: m.params)
    terms = [size_terms(m, 8e9) for m in models]
    assert all(0 <= q <= 1 and 0 <= lat <= 1 and 0 < b <= 1 for q, lat, b in terms)
    qualities = [q for q, _, _ in terms]
    latencies = [lat for _, lat, _ in terms]
    assert qualities == sorted(qualities) and latencies == sorted(latencies, reverse=True)


def test_moe_is_fast_like_its_active_size_and_good_like_more() -> None:
    moe, dense_small, dense_big = find_model("qwen3-30b-a3b"), find_model("qwen3-4b"), find_model("qwen3-32b")
    q_moe, lat_moe, _ = size_terms(moe, 8e9)
    assert lat_moe >= size_terms(dense_small, 8e9)[1]  # 3.3B active runs like a 4B
    assert size_terms(dense_small, 8e9)[0] < q_moe < size_terms(dense_big, 8e9)[0]


def test_balanced_ideal_grows_with_the_memory_given() -> None:
    assert ideal_params(profile(mem_gib=8)) < ideal_params(profile(mem_gib=24)) < ideal_params(profile(gpus=8))
    assert ideal_params(profile(mem_gib=1)) == 5e8


def test_priority_orders_two_sizes_the_expected_way() -> None:
    small, big = find_model("qwen2.5-1.5b-instruct"), find_model("qwen2.5-32b-instruct")
    assert score(profile("quality"), big, None, "qlora") > score(profile("quality"), small, None, "lora")
    assert score(profile("latency"), small, None, "lora") > score(profile("latency"), big, None, "lora")


@pytest.mark.parametrize(("use_case", "expected"), [("code", 1.0), ("summarization", 0.5), (None, 0.5)])
def test_use_case_fit_from_family_strengths(use_case, expected) -> None:
    family = next(f for f in load_catalog().families if f.name == "qwen3")
    assert use_case_fit(profile(use_case=use_case), family) == expected
