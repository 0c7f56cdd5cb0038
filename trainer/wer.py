"""Word and character error rates for the asr task's validation (jiwer), after a light text normaliser.

The normaliser makes `Hello, World!` and `hello world` the same transcript: Unicode NFKC, lower case,
every character that is not a letter, digit, apostrophe or space becomes a space, whitespace collapsed.
(Whisper's English normaliser also spells out numbers and British spellings; that is a model-specific
choice the references would have to follow too, so it is not applied.) Errors and reference lengths
are counted per rank and summed over ranks before dividing, so WER is the corpus rate (total edits over
total reference words), the same for any number of processes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(ch if ch.isalnum() or ch in "' " else " " for ch in text)
    return " ".join(kept.split())


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations against the references and the references' length, in words and in characters."""

    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0

    def as_list(self) -> list[float]:
        return [float(self.word_errors), float(self.words), float(self.char_errors), float(self.chars)]


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Summed word and character edits of each hypothesis against its reference (both normalised).

    A reference that normalises to nothing has no words to get wrong: its hypothesis's words (characters)
    all count as insertions (jiwer refuses empty references)."""
    import jiwer

    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    word_errors = sum(len(h.split()) for r, h in zip(refs, hyps, strict=True) if not r)
    char_errors = sum(len(h) for r, h in zip(refs, hyps, strict=True) if not r)
    words = chars = 0
    if pairs:
        ref_list, hyp_list = [r for r, _ in pairs], [h for _, h in pairs]
        w = jiwer.process_words(ref_list, hyp_list)
        c = jiwer.process_characters(ref_list, hyp_list)
        word_errors += w.substitutions + w.deletions + w.insertions
        char_errors += c.substitutions + c.deletions + c.insertions
        words = sum(len(r.split()) for r in ref_list)
        chars = sum(len(r) for r in ref_list)
    return ErrorCounts(word_errors, words, char_errors, chars)


def rates(totals: Sequence[float]) -> dict[str, float]:
    """`val_wer` and `val_cer` from summed `ErrorCounts.as_list()` values."""
    word_errors, words, char_errors, chars = totals
    return {"val_wer": word_errors / max(words, 1.0), "val_cer": char_errors / max(chars, 1.0)}
