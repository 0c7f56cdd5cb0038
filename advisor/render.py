"""How the advisor's answers look: rich tables for people, one JSON document for machines.

`recommend` and the wizard both print through here, so the table a user sees in the wizard is the one
`automodel recommend` prints. Nothing here decides anything; it only formats `rank.Recommendations`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from automodel.advisor.explain import gib, method_text
from automodel.advisor.rank import Recommendation, Recommendations
from automodel.catalog.memory.headroom import HEADROOM, HEADROOM_RULE, headroom_limit
from automodel.catalog.memory.plan import MemoryEstimate, term_label


def strategy_text(rec: Recommendation) -> str:
    plan = rec.plan
    text = method_text(plan)
    extras = ["grad ckpt"] if plan.grad_ckpt else []
    if plan.gpus > 1:
        extras.append(f"FSDP2 x{plan.gpus}" + (f" ({rec.nodes} nodes)" if rec.nodes > 1 else ""))
    return text + (", " + ", ".join(extras) if extras else "")


NARROW = 120  # below this many columns the reasons go under the table instead of into a squeezed column


def _why(rec: Recommendation) -> str:
    return rec.summary + (f"; ~{rec.train_seconds / 3600:.1f} h" if rec.train_seconds is not None else "")


def recommendations_table(result: Recommendations, top: int, width: int = 200) -> Table:
    """The ranked picks. Narrower than NARROW columns, the `why` column is left out: `reasons_below`
    prints it under the table, so no column is squeezed to one word per line."""
    hw = result.profile.hardware
    # The memory always shows: with --gpu NAME --gpu-mem GB the plans are for GB, not the card's memory.
    gpu = f"{hw.gpu} ({gib(hw.memory_bytes)} GiB)" if hw.gpu else f"{gib(hw.memory_bytes)} GiB GPU"
    title = (
        f"{result.profile.task.modality.upper()}"
        + (f" / {result.profile.task.use_case}" if result.profile.task.use_case else "")
        + f" on {hw.total_gpus} x {gpu} - priority {result.profile.requirements.priority}"
        + f", {result.profile.seq_len} tokens x {result.profile.requirements.batch}"
    )
    narrow = width < NARROW
    table = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
                  highlight=False)
    table.add_column("#", justify="right")
    table.add_column("model", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("strategy", min_width=12)
    table.add_column("GiB/GPU", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    if not narrow:
        table.add_column("why")
    for rec in result.top(top):
        m = rec.model
        cells = [str(rec.rank), m.name, m.display_params, strategy_text(rec),
                 f"{gib(rec.estimate.peak_reserved)}/{gib(rec.gpu_mem_bytes)}", f"{rec.score:.1f}"]
        table.add_row(*cells, *([] if narrow else [_why(rec)]))
    return table


def reasons_below(result: Recommendations, top: int) -> list[str]:
    """The `why` of each pick as lines under a narrow table (`1. qwen3-4b: full FT needs 87 GiB`)."""
    return [f"{rec.rank}. {rec.model.name}: {_why(rec)}" for rec in result.top(top)]


def exclusions_table(result: Recommendations, limit: int | None = None) -> Table:
    table = Table(title="excluded", show_lines=False)
    table.add_column("model")
    table.add_column("reason", overflow="fold")
    for item in result.excluded[:limit]:
        table.add_row(item.model, item.reason)
    return table


def breakdown_table(est: MemoryEstimate, gpu_mem_bytes: int) -> Table:
    table = Table(title=f"memory per GPU ({est.engine} estimate)")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    for term, value in est.breakdown().items():
        if value:
            table.add_row(term_label(term), gib(value))
    table.add_row("peak allocated", gib(est.peak_allocated))
    table.add_row("peak reserved", gib(est.peak_reserved))
    table.add_row(f"GPU ({HEADROOM:.0%} limit)", f"{gib(gpu_mem_bytes)} ({gib(headroom_limit(gpu_mem_bytes))})")
    return table


def launch_command(rec: Recommendation, config_path: str) -> str:
    """`automodel finetune <task> -c PATH`, with the process layout when the plan spans several GPUs."""
    command = f"automodel finetune {rec.model.modality} -c {shlex.quote(config_path)}"
    if rec.gpus_per_node > 1 or rec.nodes > 1:
        command += f" --nproc-per-node {rec.gpus_per_node}"
    if rec.nodes > 1:
        command += f" --nnodes {rec.nodes} --node-rank <0..{rec.nodes - 1}> --master-addr <rank-0 host>"
    return command


def next_step(result: Recommendations, argv: Sequence[str], written: tuple[str, Recommendation] | None) -> str:
    """One line: the command that writes the top pick's config and launches it."""
    if written is not None:
        return f"next: {launch_command(written[1], written[0])}"
    rec = result.recommendations[0]  # what --write-config writes
    path = f"{rec.model.name}.yaml"
    again = " ".join(shlex.quote(a) for a in ["automodel", *argv, "--write-config", path])
    return f"next: {again} && {launch_command(rec, path)}"


def print_no_fit(console: Console, result: Recommendations) -> None:
    """The headline says what ruled the models out (flags, memory or both), then why each one went."""
    memory = sum(e.kind == "memory" for e in result.excluded)
    if memory == len(result.excluded):
        headline = "No model fits this hardware."
    elif memory == 0:
        headline = f"No {result.profile.task.modality} model in the catalog meets these requirements."
    else:
        headline = f"No model fits: {len(result.excluded) - memory} fail these requirements, {memory} need more GPU memory."
    console.print(f"[bold red]{headline}[/] Why each was excluded:")
    console.print(exclusions_table(result))


def print_human(
    console: Console,
    result: Recommendations,
    top: int,
    argv: Sequence[str],
    written: tuple[str, Recommendation] | None = None,
) -> None:
    if not result.recommendations:
        print_no_fit(console, result)
        return
    console.print(recommendations_table(result, top, console.width))
    if console.width < NARROW:
        for line in reasons_below(result, top):
            console.print(line, highlight=False, markup=False)
    console.print(f"Fit rule: {HEADROOM_RULE}.", style="dim", highlight=False)
    if result.excluded:
        console.print(f"{len(result.excluded)} model(s) excluded (--json lists why).", style="dim")
    console.print(next_step(result, argv, written), soft_wrap=True, highlight=False)
