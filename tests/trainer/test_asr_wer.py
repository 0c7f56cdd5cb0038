"""trainer/wer.py: the normaliser and corpus WER/CER summed over pieces (as ranks sum them)."""

from __future__ import annotations

import pytest

from automodel.trainer.wer import ErrorCounts, error_counts, normalise, rates


def test_normaliser_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  Hello,   World!  It's  ÉTÉ.") == "hello world it's été"
    assert normalise("...") == ""


def test_counts_match_jiwer_and_known_edits() -> None:
    import jiwer

    refs, hyps = ["the cat sat", "a b c d"], ["The cat, sat!", "a x c"]
    counts = error_counts(refs, hyps)
    assert counts == ErrorCounts(word_errors=2, words=7, char_errors=3, chars=18)  # b->x, " d" deleted
    assert rates(counts.as_list())["val_wer"] == pytest.approx(jiwer.wer(refs, [normalise(h) for h in hyps]))
    assert rates(counts.as_list())["val_cer"] == pytest.approx(jiwer.cer(refs, [normalise(h) for h in hyps]))


def test_corpus_rate_is_the_same_split_in_pieces() -> None:
    """Ranks sum their counts before dividing: splitting the corpus anywhere gives the same WER."""
    refs = ["one two three", "four", "five six", "seven eight nine ten"]
    hyps = ["one too three", "", "five six six", "seven nine ten"]
    whole = rates(error_counts(refs, hyps).as_list())
    parts = [error_counts(refs[:1], hyps[:1]).as_list(), error_counts(refs[1:], hyps[1:]).as_list()]
    assert rates([a + b for a, b in zip(*parts, strict=True)]) == whole
    assert whole["val_wer"] == pytest.approx(4 / 10)


def test_empty_reference_counts_hypothesis_as_insertions() -> None:
    assert error_counts(["?!"], ["hello there"]) == ErrorCounts(word_errors=2, words=0, char_errors=11, chars=0)
    assert rates(error_counts(["a"], ["a"]).as_list()) == {"val_wer": 0.0, "val_cer": 0.0}
