"""bench/advisor_tables.py: the recommendation tables in docs/advisor.md are what `recommend` prints today."""

from __future__ import annotations

from tests.conftest import load_script

tables = load_script("bench/advisor_tables.py", "advisor_tables")


def test_docs_tables_match_what_recommend_prints(capsys) -> None:
    code = tables.run(["--check"])
    assert code == 0, capsys.readouterr().err  # names the stale rows and the command that regenerates them


def test_a_stale_row_is_found_and_rewritten() -> None:
    row = "| 24-48 GB | `--task llm --gpu-mem 24` | made-up (1.0B): LoRA r16, 1.0/24.0 GiB | - | - |"
    text, stale = tables.regenerate(f"intro\n{row}\n")
    assert stale == ["--task llm --gpu-mem 24"] and "made-up" not in text and "/24.0 GiB" in text
