"""Scoring terms: monotone in the directions the priorities promise, bounded, MoE-aware."""

from __future__ import annotations

import pytest

from automodel.advisor.profile import Hardware, Profile, Requirements, Task
from automodel.advisor.scoring import (
    RECENCY_WEIGHT,
    WEIGHTS,
    general_fit,
    ideal_params,
    newest_release,
    recency,
    score,
    size_terms,
    use_case_fit,
)
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


@pytest.mark.parametrize(("name", "use_case", "expected"), [
    ("qwen3-8b", "code", 0.85), ("qwen3-8b", "summarization", 0.5), ("qwen3-8b", None, 0.5),
    ("qwen2.5-coder-7b-instruct", "code", 1.0), ("codellama-7b-instruct", "code", 1.0),
    ("llama-3.1-8b-instruct", "chat", 0.85), ("llama-3.1-8b", "chat", 0.425),
])
def test_use_case_fit_from_family_strengths(name, use_case, expected) -> None:
    model = find_model(name)
    family = load_catalog().family(model.family)
    assert use_case_fit(profile(use_case=use_case), family, model) == pytest.approx(expected)


def test_weights_sum_to_one_and_recency_is_a_tenth() -> None:
    for priority, weights in WEIGHTS.items():
        assert sum(weights) == pytest.approx(1.0), priority
        assert weights[-1] == RECENCY_WEIGHT == 0.10


@pytest.mark.parametrize(
    ("name", "expected"),
    [("qwen3-4b", 1.0), ("gemma-2-9b-it", 1.0), ("whisper-small", 1.0), ("wav2vec2-base-960h", 1.0),
     ("codellama-7b-instruct", 0.5), ("phi-2", 0.25), ("llama-3.1-8b", 0.5), ("llama-3.1-8b-instruct", 1.0)],
)
def test_general_fit_from_the_checkpoint_tags(name, expected) -> None:
    assert general_fit(find_model(name)) == expected


def test_recency_is_linear_in_months_and_floored() -> None:
    newest = newest_release("llm")
    assert newest == find_model("qwen3-8b").released_month  # Qwen3 (2025-04) is the newest text model here
    assert recency(find_model("qwen3-8b"), newest) == 1.0
    assert recency(find_model("qwen2.5-7b-instruct"), newest) == pytest.approx(1 - 7 / 48)
    assert recency(find_model("codellama-7b-instruct"), newest) == pytest.approx(1 - 20 / 48)
    assert recency(find_model("codellama-7b-instruct"), newest + 60) == 0.0


def test_a_year_newer_is_worth_two_and_a_half_points() -> None:
    model, newest = find_model("qwen2.5-7b-instruct"), newest_release("llm")
    for priority in WEIGHTS:
        now, year_later = (score(profile(priority), model, None, "lora", n) for n in (newest, newest + 12))
        assert now - year_later == pytest.approx(2.5, abs=0.11), priority


def test_no_use_case_scores_a_general_model_above_a_specialist_of_the_same_size() -> None:
    general, code = find_model("qwen2.5-7b-instruct"), find_model("codellama-7b-instruct")
    newest = general.released_month  # same recency for both: only the fit differs
    p = profile()
    gap = score(p, general, None, "lora", newest) - score(p, code.model_copy(update={"released": general.released}),
                                                          None, "lora", newest)
    assert gap > 5  # the fit term alone: 0.5 x 0.135 = 6.75 points, the size terms differ by under one
