"""Regenerate (or check) the recommendation tables in docs/advisor.md from what `automodel recommend` prints.

Every table row whose second cell is a backticked `recommend` command (`| tier | `--task llm --gpu-mem 24` |
#1 | #2 | #3 |`) is rerun in-process with `--json --top 3`, and its three pick cells are rewritten as
`model (size): strategy, reserved/GPU GiB`. With `--check` nothing is written and the exit code is 1 when a
row differs, naming it, so the docs cannot drift from the ranking or the estimator unnoticed
(tests/bench/test_advisor_tables.py runs the check).

    python bench/advisor_tables.py           # rewrite docs/advisor.md in place
    python bench/advisor_tables.py --check   # exit 1 listing stale rows
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

from automodel.advisor.cli import main as automodel

DOC = Path(__file__).resolve().parents[1] / "docs" / "advisor.md"
ROW = re.compile(r"^\| (?P<tier>[^|]+) \| `(?P<command>--[^`]+)` \|(?P<picks>.*)\|$")
METHOD = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}


def cell(rec: dict) -> str:
    """`qwen3-4b (4.0B): LoRA r16, ckpt, FSDP2 x8, 14.2/24.0 GiB`."""
    s = rec["strategy"]
    parts = [METHOD[s["method"]] + (f" r{s['lora_rank']}" if s["method"] != "full" else "")]
    if s["grad_ckpt"]:
        parts.append("ckpt")
    gpus = s["gpus"] * s["nodes"]
    if gpus > 1:
        parts.append(f"FSDP2 x{gpus}")
    used = rec["estimate"]["peak_reserved_bytes"] / 2**30
    return (f"{rec['model']} ({rec['params'] / 1e9:.1f}B): {', '.join(parts)}, "
            f"{used:.1f}/{rec['gpu_mem_bytes'] / 2**30:.1f} GiB")


def picks(command: str) -> list[str]:
    """The top three cells for one documented command ('-' where fewer fit)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = automodel(["recommend", *shlex.split(command), "--json", "--top", "3"])
    if code != 0:
        raise SystemExit(f"`automodel recommend {command}` exited {code}")
    recs = json.loads(out.getvalue())["recommendations"]
    return [cell(r) for r in recs] + ["-"] * (3 - len(recs))


def regenerate(text: str) -> tuple[str, list[str]]:
    """The document with every command row recomputed, and the commands whose row changed."""
    lines, stale = [], []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            new = f"| {match['tier']} | `{match['command']}` | " + " | ".join(picks(match["command"])) + " |"
            if new != line:
                stale.append(match["command"])
            line = new
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), stale


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a row is stale")
    args = parser.parse_args(argv)
    text, stale = regenerate(DOC.read_text(encoding="utf-8"))
    if args.check:
        for command in stale:
            print(f"stale row in docs/advisor.md: `automodel recommend {command}`", file=sys.stderr)
        if stale:
            print("regenerate with: python bench/advisor_tables.py", file=sys.stderr)
        return 1 if stale else 0
    DOC.write_text(text, encoding="utf-8")
    print(f"docs/advisor.md: {len(stale)} row(s) updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
