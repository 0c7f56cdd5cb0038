"""What a run reports: metrics.jsonl lines, the rank-0 progress bar, peak memory and the final summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class MetricsFile:
    """`output_dir/<name>`: one JSON object per logged step. On resume, lines after the resumed step go,
    so a resumed run's file reads like an uninterrupted one."""

    def __init__(self, path: Path, *, resume_step: int, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if resume_step and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (for tests, benches and the summary)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def memory_now(device: torch.device) -> int | None:
    """Bytes of tensors allocated on the GPU now (None on CPU)."""
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    """Start the CUDA allocator's peak afresh (at the bytes allocated now), so the peak read after the loop
    covers the training steps the estimate describes, not model loading or a resume's full-tensor copies."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): the CUDA allocator's peak, or on CPU the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes. RSS counts the Python runtime and libraries too, so it is not
    # comparable with a GPU estimate; it is printed as context only.
    return (rss if sys.platform == "darwin" else rss * 1024), "process peak RSS (CPU; not comparable to the estimate)"


def progress_bar(total: int, completed: int, enabled: bool) -> Any:
    """A rich progress bar on stderr showing loss, lr, tokens/s and memory, or None."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=Console(stderr=True),
    )
    progress.add_task("train", total=total, completed=completed, info="")
    progress.start()
    return progress


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def summary_table(result: Any) -> Any:
    """A rich table of the finished run (rank 0 prints it)."""
    from rich.table import Table

    table = Table(title="run summary", show_header=False)
    table.add_row("steps", f"{result.steps} (resumed from step {result.resumed_from})" if result.resumed_from
                  else str(result.steps))
    table.add_row("final train loss", "n/a" if result.final_loss is None else f"{result.final_loss:.4f}")
    table.add_row("validation loss", "n/a" if result.val_loss is None else f"{result.val_loss:.4f}")
    table.add_row("tokens/s", f"{result.tokens_per_s:,.0f}")
    table.add_row("measured peak", f"{gib(result.peak_memory_bytes)} ({result.peak_memory_kind})")
    if result.estimate is not None:
        table.add_row("estimated peak", f"{gib(result.estimate.peak_allocated)} (allocated, per GPU, "
                      f"engine={result.estimate.engine})")
    else:
        table.add_row("estimated peak", "n/a (estimator unavailable)")
    for kind, path in result.exports.items():
        table.add_row(f"export: {kind}", path)
    return table
