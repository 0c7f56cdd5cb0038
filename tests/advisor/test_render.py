"""Rendering: the table shows every pick with its memory against the GPU, the next step is a command
that writes the config the table's pick would get, and --json is one parseable document."""

from __future__ import annotations

import json

from rich.console import Console

from automodel.advisor.profile import Hardware, Profile, Requirements, Task
from automodel.advisor.rank import recommend
from automodel.advisor.render import (
    breakdown_table,
    launch_command,
    next_step,
    print_human,
    strategy_text,
)

GIB = 2**30


def result_for(task: str, mem: float, gpus: int = 1, nodes: int = 1, **req):
    hw = Hardware(memory_bytes=int(mem * GIB), gpus_per_node=gpus, nodes=nodes)
    return recommend(Profile(task=Task(modality=task), hardware=hw, requirements=Requirements(**req)))


def render(fn, *args) -> str:
    console = Console(width=160, record=True)
    fn(console, *args)
    return console.export_text()


def test_table_lists_the_top_k_with_memory_against_the_gpu() -> None:
    result = result_for("vlm", 24)
    text = render(print_human, result, 3, ["recommend", "--task", "vlm", "--gpu-mem", "24"])
    for rec in result.top(3):
        assert rec.model.name in text and f"{rec.estimate.peak_reserved / GIB:.1f}/24.0" in text
    assert result.recommendations[3].model.name not in text
    assert "next: automodel recommend --task vlm --gpu-mem 24 --write-config" in text


def test_nothing_fits_prints_the_exclusions() -> None:
    result = result_for("asr", 0.1)
    text = render(print_human, result, 5, ["recommend"])
    assert "No model fits this hardware" in text and all(e.model in text for e in result.excluded)


def test_headline_says_requirements_when_no_model_was_memory_bound() -> None:
    # Every llm is excluded for its context length, none for memory: "fits this hardware" would mislead.
    result = result_for("llm", 80, seq_len=10_000_000)
    assert {e.kind for e in result.excluded} == {"requirement"}
    text = render(print_human, result, 5, ["recommend"])
    assert "No llm model in the catalog meets these requirements" in text and "fits this hardware" not in text
    mixed = render(print_human, result_for("llm", 1, seq_len=100_000), 5, ["recommend"])
    assert "fail these requirements" in mixed and "need more GPU memory" in mixed


def test_launch_command_spans_gpus_and_nodes() -> None:
    multi = next(r for r in result_for("llm", 40, gpus=8, nodes=2, priority="quality").recommendations
                 if r.plan.gpus > 8)
    command = launch_command(multi, "run.yaml")
    assert command.startswith(f"automodel finetune llm -c run.yaml --nproc-per-node 8 --nnodes {multi.nodes}")
    single = result_for("llm", 24).recommendations[0]
    assert launch_command(single, "a b.yaml") == "automodel finetune llm -c 'a b.yaml'"
    assert "grad ckpt" in strategy_text(single) or "LoRA" in strategy_text(single)


def test_next_step_names_the_written_file() -> None:
    result = result_for("llm", 24)
    rec = result.recommendations[0]
    assert next_step(result, [], ("out.yaml", rec)) == f"next: {launch_command(rec, 'out.yaml')}"


def test_breakdown_sums_to_the_peak_terms() -> None:
    rec = result_for("llm", 24).recommendations[0]
    console = Console(width=100, record=True)
    console.print(breakdown_table(rec.estimate, rec.gpu_mem_bytes))
    text = console.export_text()
    assert "peak reserved" in text and f"{rec.estimate.weights / GIB:.1f}" in text


def test_json_is_one_document_with_assumptions() -> None:
    result = result_for("llm", 24)
    doc = json.loads(result.to_json({"task": "llm"}, 2))
    assert len(doc["recommendations"]) == 2 and doc["inputs"] == {"task": "llm"}
    assert any("90%" in a for a in doc["assumptions"])


def test_title_shows_the_memory_planned_for_when_gpu_mem_overrides_the_card() -> None:
    hw = Hardware(gpu="A100-80GB", memory_bytes=24 * GIB, gpus_per_node=1, nodes=1)
    result = recommend(Profile(task=Task(modality="llm"), hardware=hw, requirements=Requirements()))
    text = render(print_human, result, 3, ["recommend"])
    assert "1 x A100-80GB (24.0 GiB)" in text


# --- every table at 80 and at 200 columns -----------------------------------------------------------------


def _cells(table) -> list[str]:
    from rich.text import Text

    return [Text.from_markup(str(cell)).plain for column in table.columns for cell in column._cells]


def _squeezed(text: str, cells: list[str]) -> list[str]:
    """Cells of two or more words none of whose neighbouring word pairs share a rendered line: rich wrapped
    them one word per line (a folded or truncated cell still keeps its first two words together)."""
    lines = text.splitlines()
    bad = []
    for cell in cells:
        words = cell.split()
        pairs = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        if pairs and not any(pair in line for pair in pairs for line in lines):
            bad.append(cell)
    return bad


def _render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def _tables(width: int):
    from automodel.advisor.commands_catalog import gpu_rows, gpus_table
    from automodel.advisor.commands_estimate import estimate_table
    from automodel.advisor.render import recommendations_table

    llm, vlm = result_for("llm", 24), result_for("vlm", 80, gpus=8)
    yield "recommend llm", recommendations_table(llm, 5, width)
    yield "recommend vlm x8", recommendations_table(vlm, 5, width)
    yield "gpus", gpus_table(gpu_rows(), width)
    yield "estimate", estimate_table(llm.recommendations[0].estimate)
    yield "breakdown", breakdown_table(llm.recommendations[0].estimate, 24 * GIB)


def test_tables_read_well_at_80_and_200_columns() -> None:
    for width in (80, 200):
        for name, table in _tables(width):
            text = _render(table, width)
            assert max(map(len, text.splitlines())) <= width, (name, width)
            assert not _squeezed(text, _cells(table)), (name, width, _squeezed(text, _cells(table)), text)


def test_narrow_recommend_moves_the_reasons_under_the_table() -> None:
    result = result_for("llm", 24)
    for width, under in ((80, True), (200, False)):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        print_human(console, result, 5, ["recommend"])
        text = console.export_text()
        first = result.recommendations[0]
        assert (f"1. {first.model.name}: {first.summary}" in text) is under
        assert first.summary in text


def test_the_term_names_and_the_estimate_title_are_the_same_everywhere() -> None:
    """`adapter weights` in estimate, the breakdown and --dry-run alike; the titles say checkpointing."""
    from automodel.advisor.commands_estimate import estimate_title
    from automodel.trainer.cli import render_estimate

    rec = result_for("llm", 24).recommendations[0]
    est = rec.estimate
    dry = render_estimate(est, 1, grad_ckpt=rec.plan.grad_ckpt, width=80)
    for text in (_render(breakdown_table(est, 24 * GIB), 80), dry):
        assert "adapter weights" in text and "adapter_weights" not in text
    assert f"grad ckpt {'on' if rec.plan.grad_ckpt else 'off'}" in dry
    assert "grad ckpt on" in estimate_title("m", rec.plan.model_copy(update={"grad_ckpt": True}), "analytic")
    assert "grad ckpt off" in estimate_title("m", rec.plan.model_copy(update={"grad_ckpt": False}), "analytic")
    assert max(map(len, render_estimate(est, 1, grad_ckpt=True, width=200).splitlines())) > 80  # not 110


def test_model_names_are_not_recoloured(monkeypatch, capsys) -> None:
    """rich's highlighter would colour 3.2 and 1b inside llama-3.2-1b (escape codes split the name)."""
    from automodel.advisor.cli import main

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["estimate", "llama-3.2-1b"]) == 0
    assert "llama-3.2-1b: train" in capsys.readouterr().out
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out  # coloured output, and yet
    assert result_for("llm", 24).recommendations[0].model.name in out
