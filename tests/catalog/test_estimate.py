"""estimate(): analytic entry point, the lazy simulator hook, and the units parser the CLI and advisor share."""

from __future__ import annotations

import sys

import pytest

from automodel.catalog.errors import UserError
from automodel.catalog.memory.analytic import estimate_analytic
from automodel.catalog.memory.estimate import estimate, simulated
from automodel.catalog.memory.plan import Plan
from automodel.catalog.units import GIB, parse_count, parse_memory
from tests.catalog.configs import tiny_llama

TINY = tiny_llama()


def test_analytic_dispatch_and_params_override() -> None:
    plan = Plan(method="full")
    assert estimate(TINY, plan) == estimate_analytic(TINY, plan)
    doubled = estimate(TINY, plan, params=2 * estimate(TINY, plan).params)
    assert doubled.weights == 2 * estimate(TINY, plan).weights


def test_simulate_is_lazy_and_a_missing_simulator_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "automodel.trainer.simulate", None)  # import fails
    with pytest.raises(UserError) as err:
        simulated(TINY, Plan())
    assert err.value.field == "--simulate"


@pytest.mark.parametrize(("text", "expected"), [
    ("24", 24 * GIB), ("24G", 24 * GIB), ("24GB", 24 * GIB), ("24GiB", 24 * GIB), ("24 gb", 24 * GIB),
    ("0.5TiB", 512 * GIB), ("512MiB", 512 * 1024**2), (80, 80 * GIB),
])
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "24XB", "-3", "0", "twenty", "24TB", "1025GiB", "nan", "1e9"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(UserError) as err:
        parse_memory(text)
    assert err.value.field == "--gpu-mem"


def test_parse_memory_says_why() -> None:
    with pytest.raises(UserError, match="must be positive"):
        parse_memory("-1")
    with pytest.raises(UserError, match="more than any GPU has"):
        parse_memory("24TB")
    assert parse_memory("1TiB") == 1024 * GIB  # the bound itself is accepted


@pytest.mark.parametrize(("text", "value"), [("8B", 8 * 10**9), ("250m", 250 * 10**6), ("1.5b", 1_500_000_000),
                                             ("8e9", 8 * 10**9), ("2000000", 2_000_000), (".5k", 500)])
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize(("text", "words"), [("abc", "is not a count"), ("-5", "is not a count"),
                                             ("1e400", "too large"), ("0", "below 1"), ("0.4", "below 1")])
def test_parse_count_rejects_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_count(text)


def test_lora_targets_read_the_same_from_a_flag_or_yaml() -> None:
    from automodel.catalog.memory.plan import lora_targets_from

    assert Plan(lora_targets="q_proj, v_proj").lora_targets == ("q_proj", "v_proj")
    assert lora_targets_from(["q_proj", " ", " v_proj"]) == ("q_proj", "v_proj")
    assert lora_targets_from("all-linear") == "all-linear"
    for empty in ("", " , ", [], None):
        with pytest.raises(ValueError, match="all-linear"):
            lora_targets_from(empty)
