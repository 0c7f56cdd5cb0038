"""max_fit: the binary search finds the exact boundary of the estimator."""

from __future__ import annotations

from automodel.catalog.memory.estimate import estimate
from automodel.catalog.memory.fit import max_fit
from automodel.catalog.memory.headroom import HEADROOM, headroom_limit
from automodel.catalog.memory.plan import Plan
from tests.catalog.configs import tiny_llama

TINY = tiny_llama(hidden_size=256, intermediate_size=512, vocab_size=1000)


def test_boundaries_are_exact_under_the_headroom_rule() -> None:
    plan = Plan(method="full", seq_len=512, micro_batch=2)
    need = estimate(TINY, plan.model_copy(update={"micro_batch": 37})).peak_reserved
    budget = int(need / HEADROOM) + 2  # a GPU whose 90 % just holds batch 37
    fit = max_fit(TINY, plan, budget)
    limit = headroom_limit(budget)
    assert fit.limit_bytes == limit < budget and limit >= need
    assert fit.max_micro_batch == 37
    assert fit.at_max_batch is not None and fit.at_max_batch.peak_reserved <= limit
    assert fit.max_seq_len is not None
    at = estimate(TINY, plan.model_copy(update={"seq_len": fit.max_seq_len}))
    over = estimate(TINY, plan.model_copy(update={"seq_len": fit.max_seq_len + 1}))
    assert at.peak_reserved <= limit < over.peak_reserved
    assert fit.to_json()["max_micro_batch"] == 37


def test_nothing_fits() -> None:
    fit = max_fit(TINY, Plan(method="full"), 1024)
    assert fit.max_micro_batch is None and fit.max_seq_len is None and fit.at_max_batch is None
