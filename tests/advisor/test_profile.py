"""The decision model: validation rules name the field, defaults live in the schema."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from automodel.advisor.cli import build_parser
from automodel.advisor.profile import (
    DEFAULT_SEQ_LEN,
    USE_CASES,
    USE_CASES_BY_MODALITY,
    Hardware,
    Profile,
    Requirements,
    StrategyPreference,
    Task,
)
from automodel.catalog.schema import USE_CASES_BY_MODALITY as CATALOG_BY_MODALITY
from automodel.catalog.schema import UseCase as CatalogUseCase

GIB = 2**30


def test_use_cases_are_the_issue_list_and_fit_their_modality() -> None:
    assert set(USE_CASES) == {
        "chat", "code", "instruction", "summarization", "reasoning", "multilingual", "vqa", "captioning",
        "document", "transcription", "translation",
    }
    assert "transcription" in USE_CASES_BY_MODALITY["asr"] and "transcription" not in USE_CASES_BY_MODALITY["llm"]
    assert "vqa" in USE_CASES_BY_MODALITY["vlm"] and "vqa" not in USE_CASES_BY_MODALITY["llm"]


def test_use_case_flag_and_field_take_the_catalog_tags_minus_safety() -> None:
    # Derived here from catalog.schema on its own, not from profile.USE_CASES: the flag's choices and the
    # Task field must both accept every catalog tag but `safety` (the --safety filter) and nothing else.
    expected = set(get_args(CatalogUseCase)) - {"safety"}
    parser = build_parser()
    recommend = next(a for a in parser._subparsers._group_actions[0].choices["recommend"]._actions
                     if "--use-case" in a.option_strings)
    assert set(recommend.choices) == expected
    for use_case in expected:
        modality = next(m for m, allowed in CATALOG_BY_MODALITY.items() if use_case in allowed)
        assert Task(modality=modality, use_case=use_case).use_case == use_case
    with pytest.raises(ValidationError, match="use_case"):
        Task(modality="llm", use_case="safety")


def test_use_case_must_fit_modality() -> None:
    with pytest.raises(ValidationError, match="use_case"):
        Task(modality="asr", use_case="code")
    assert Task(modality="vlm", use_case="document").use_case == "document"


def test_extra_fields_forbidden() -> None:
    with pytest.raises(ValidationError):
        Requirements(priority="quality", colour="red")  # type: ignore[call-arg]


def test_seq_len_default_depends_on_modality() -> None:
    hw = Hardware(memory_bytes=24 * GIB)
    assert Profile(task=Task(modality="asr"), hardware=hw).seq_len == DEFAULT_SEQ_LEN["asr"] == 448
    assert Profile(task=Task(modality="llm"), hardware=hw).seq_len == 2048
    given = Profile(task=Task(modality="llm"), hardware=hw, requirements=Requirements(seq_len=4096))
    assert given.seq_len == 4096


def test_hardware_totals_and_detected_flag() -> None:
    hw = Hardware(gpu="H100-SXM", memory_bytes=80 * GIB, gpus_per_node=8, nodes=2, source="nvidia-smi")
    assert hw.total_gpus == 16 and hw.detected and hw.memory_gib == 80
    assert not Hardware(memory_bytes=GIB).detected
    with pytest.raises(ValidationError):
        Hardware(memory_bytes=0)


def test_fsdp_degree_cannot_exceed_gpus() -> None:
    hw = Hardware(memory_bytes=24 * GIB, gpus_per_node=2)
    with pytest.raises(ValidationError, match="fsdp_degree"):
        Profile(task=Task(modality="llm"), hardware=hw, strategy=StrategyPreference(fsdp_degree=4))
    ok = Profile(task=Task(modality="llm"), hardware=hw, strategy=StrategyPreference(fsdp_degree=2))
    assert ok.strategy.fsdp_degree == 2
