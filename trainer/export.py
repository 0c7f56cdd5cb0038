"""Export the trained model: the LoRA adapter in PEFT format and/or the merged model as HF safetensors.

Both gather full (unsharded) tensors on rank 0 through the same state-dict API as checkpoints, so they
work for one process and for FSDP2 shards alike. Every rank must call them; only rank 0 writes.
`PeftModel.from_pretrained(base, OUT/adapter)` and `AutoModelForCausalLM.from_pretrained(OUT/merged)`
load the results; the tokenizer is saved beside each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.trainer.checkpoint import model_state
from automodel.trainer.distributed import Dist, barrier
from automodel.trainer.peft import is_lora

if TYPE_CHECKING:
    from torch import nn


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def export_adapter(model: nn.Module, tokenizer: Any, out: Path, d: Dist) -> Path:
    """Write `out` (adapter_config.json + adapter_model.safetensors + tokenizer)."""
    state = model_state(model, trainable_only=True)
    if d.is_main:
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        # peft keeps only the adapter keys of `state_dict` and strips the adapter name, as for a plain save.
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    barrier(d)
    return out


def export_merged(model: nn.Module, tokenizer: Any, out: Path, d: Dist,
                  build_unsharded: Callable[[], nn.Module]) -> Path:
    """Write `out` as a plain transformers model: LoRA merged into the base weights, safetensors.

    `build_unsharded` makes a fresh CPU copy with the same structure (adapters included); it receives
    the gathered weights, is merged and saved, so the live (possibly sharded) model is left alone.
    """
    state = model_state(model, trainable_only=False)
    if d.is_main:
        fresh = build_unsharded()
        fresh.load_state_dict(state, strict=True)
        if is_lora(fresh):
            fresh = fresh.merge_and_unload()
        fresh.config.use_cache = True  # training turned the KV cache off; generation wants it back
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    barrier(d)
    return out
