"""Task adapters: what differs between llm, vlm and asr (data, collator, model class, loss, extra metrics).

An adapter is a module under `automodel.trainer.tasks` whose functions satisfy `TaskAdapter`; the
recipe looks it up with `adapter_for(cfg.task)` and never looks inside, so llm, vlm and asr share
everything else (accumulation, loss normalisation, FSDP2, checkpoints, resume, export).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from automodel.catalog.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automodel.trainer.config import DataConfig, TrainConfig
    from automodel.trainer.distributed import Dist

TASKS = ("llm", "vlm", "asr")


class TaskAdapter(Protocol):
    """The contract between the recipe and one task (a module's functions satisfy it)."""

    def load_processor(self, source: str, *, trust_remote_code: bool = False) -> Any:
        """Tokenizer or processor of a local model directory or Hub id; a cache miss is a UserError."""

    def build_samples(self, data: DataConfig, processor: Any, *, validation: bool, seed: int) -> list[Any]:
        """Read, check and encode one split's rows (every rank builds the same list); `validation` only when
        data.validation is configured (trainer/data.read_split)."""

    def sample_length(self, sample: Any) -> int:
        """A sample's length in model inputs (tokens; for speech, encoder frames): batches are bucketed
        by it and throughput counts it."""

    def collate(self, samples: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        """One padded micro batch; `labels` holds the targets."""

    def model_class(self) -> Any:
        """The transformers Auto class that loads this task's pretrained weights."""

    def prepare_model(self, model: nn.Module, cfg: TrainConfig) -> None:
        """Freeze what the config keeps frozen (vision tower, feature encoder) before adapters go on."""

    def count_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many terms `forward_loss` sums over in `batch`: the loss is normalised by their total."""

    def forward_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed fp32 loss over the batch's targets."""

    def evaluate_extra(self, model: nn.Module, processor: Any, samples: Sequence[Any], d: Dist,
                       autocast: Any) -> dict[str, float]:
        """Task metrics beside val_loss (for example val_wer), the same on every rank; {} for none."""


def adapter_for(task: str) -> TaskAdapter:
    """The adapter module of `task` (llm, vlm, asr)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}", field="task", hint=f"one of {', '.join(TASKS)}")
    try:
        module = importlib.import_module(f"automodel.trainer.tasks.{task}")
    except ModuleNotFoundError as err:
        if err.name != f"automodel.trainer.tasks.{task}":
            raise
        raise UserError(f"the {task} task adapter is not in this install (automodel/trainer/tasks/{task}.py)",
                        field="task", hint="reinstall automodel (pip install -e .)") from None
    return cast(TaskAdapter, module)
