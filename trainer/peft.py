"""LoRA for the recipe: a thin layer over `catalog.modeling.apply_lora` (the one the simulator uses)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from automodel.trainer.config import PeftConfig

if TYPE_CHECKING:
    from torch import nn


def adapt(model: nn.Module, peft: PeftConfig) -> nn.Module:
    """Wrap the model with LoRA adapters (base frozen), or leave every weight trainable."""
    if peft.method == "none":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from automodel.catalog.errors import UserError
    from automodel.catalog.modeling import apply_lora

    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers-5-deprecated alias; not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return apply_lora(model, rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout,
                              targets=peft.target_modules)
    except UserError as err:  # name the config path, not the estimator's flag
        raise UserError(err.message, field="peft.target_modules", hint=err.hint) from None


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def is_lora(model: nn.Module) -> bool:
    return callable(getattr(model, "merge_and_unload", None))
