"""LoRA and QLoRA for the recipe: a thin layer over `trainer.modeling.apply_lora` (the one the simulator
uses), plus the checks QLoRA needs before a run loads anything (one process, bitsandbytes).

QLoRA runs on a CUDA GPU, and on the CPU through bitsandbytes' CPU kernels (NF4 quantisation and 4-bit
matmuls): slow, meant for testing a config or the engine without a GPU, and said so once at the start."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from automodel.trainer.config import PeftConfig

if TYPE_CHECKING:
    from torch import nn


def adapt(model: nn.Module, peft: PeftConfig) -> nn.Module:
    """Wrap the model with LoRA adapters (base frozen), or train it in full: every weight but those the task
    adapter's `prepare_model` froze (a speech model's feature encoder, a VLM's vision tower). With LoRA,
    modules outside the language model that the task left trainable (a VLM's projector or vision tower)
    train whole and are saved in the adapter (peft's `modules_to_save`)."""
    if peft.method == "none":
        return model
    from automodel.catalog.errors import UserError
    from automodel.trainer.modeling import apply_lora, trainable_outside_language_model

    try:
        return apply_lora(model, rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout, targets=peft.target_modules,
                          modules_to_save=trainable_outside_language_model(model))
    except UserError as err:  # name the config path, not the estimator's flag
        raise UserError(err.message, field="peft.target_modules", hint=err.hint) from None


def check_runtime(peft: PeftConfig, *, world_size: int, cuda: bool, announce: bool = True) -> None:
    """What a qlora run needs from this machine; one UserError naming peft.method for the first gap.
    `validate` and `--dry-run` skip this (they run anywhere); the run checks it before loading anything.
    Without CUDA it runs on the CPU and says once (`announce`) that this is for testing."""
    if peft.method != "qlora":
        return
    import sys

    from automodel.catalog.errors import UserError

    peft.check_world_size(world_size)
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("qlora needs the bitsandbytes package, which is not installed", field="peft.method",
                        hint="pip install bitsandbytes, or use peft.method=lora")
    if not cuda and announce:
        print("note: qlora on the CPU (no CUDA GPU here) runs bitsandbytes' CPU kernels: for testing a config "
              "or the engine, not for real training", file=sys.stderr, flush=True)


def prepare_quantized(model: nn.Module, peft: PeftConfig, *, grad_ckpt: bool) -> nn.Module:
    """A 4-bit base ready for LoRA (frozen, fp32 norms/embeddings/head, checkpointing as the engine chose);
    any other model as it is."""
    if peft.method != "qlora":
        return model
    from automodel.trainer.modeling import prepare_for_kbit_training

    return prepare_for_kbit_training(model, grad_ckpt=grad_ckpt)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def is_lora(model: nn.Module) -> bool:
    return callable(getattr(model, "merge_and_unload", None))
