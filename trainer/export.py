"""Export the trained model: the LoRA adapter in PEFT format and/or the merged model as HF safetensors;
and, for a run from `model.init: random`, its initial base weights (`OUTPUT_DIR/base`).

One path for every task: `export_run` takes the task's processor (a tokenizer or a multimodal processor:
both have `save_pretrained`) and the task's Auto model class, and writes what `checkpoint.export` asks.
Exports stand on their own: the adapter's `base_model_name_or_path` names a base that loads in a new
process (the Hub id, a local model directory as an absolute path, or the run's saved random base), so
`AutoPeftModel.from_pretrained(OUT/adapter)` needs nothing but that directory. Weights are gathered on
rank 0 through the same state-dict API as checkpoints, so one process and FSDP2 shards alike work.
Every rank must call the exports; only rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.trainer.checkpoint import model_state
from automodel.trainer.distributed import Dist, barrier
from automodel.trainer.peft import is_lora

if TYPE_CHECKING:
    from torch import nn

BASE_DIR = "base"  # under output_dir: the initial weights of a random-init run
ADAPTER_NAME = "default"  # peft's name for the one adapter a run trains


@contextmanager
def _quiet_saves() -> Iterator[None]:
    """No "Writing model shards" bar per export: the run's own lines say what was written."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _tmp_for(out: Path) -> Path:
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def base_reference(source: str, *, init: str, output_dir: Path) -> str:
    """What an adapter names as its base: the run's saved base (random init), a local model directory as
    an absolute path (a relative one would resolve against the loader's working directory), or the Hub id."""
    if init == "random":
        return str((output_dir / BASE_DIR).resolve())
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def has_base(out: Path) -> bool:
    """True when `out` holds a complete saved base (the rename happens only after every file is written)."""
    return (out / "config.json").is_file() and any(out.glob("*.safetensors"))


def save_base(model: nn.Module, processor: Any, out: Path, d: Dist) -> Path:
    """Write the initial (untrained, unadapted) model to `out` as HF safetensors with its config and the
    processor, so an adapter trained on a random init has a base to load onto. Rank 0 writes the model
    as this process holds it: call it on the freshly built, unsharded model, before adapters go on."""
    if d.is_main:
        tmp = _tmp_for(out)
        use_cache = model.config.use_cache
        model.config.use_cache = True  # as a loaded model has it; training turned it off
        try:
            with _quiet_saves():
                model.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            model.config.use_cache = use_cache
        processor.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    barrier(d)
    return out


def export_adapter(model: nn.Module, processor: Any, out: Path, d: Dist, *, model_class: Any, base: str) -> Path:
    """Write `out` (adapter_config.json + adapter_model.safetensors + processor). `base` becomes the
    adapter's `base_model_name_or_path`, and `model_class` (the task's Auto class) its auto mapping, so
    `AutoPeftModel.from_pretrained(out)` rebuilds base + adapter from this directory alone."""
    state = model_state(model, trainable_only=True)
    if d.is_main:
        tmp = _tmp_for(out)
        config = model.peft_config[ADAPTER_NAME]
        config.base_model_name_or_path = base
        # peft keeps only the adapter keys of `state_dict` and strips the adapter name, as for a plain save.
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        adapter_config = tmp / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        data["auto_mapping"] = {"base_model_class": model_class.__name__, "parent_library": model_class.__module__}
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        processor.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    barrier(d)
    return out


def export_merged(model: nn.Module, processor: Any, out: Path, d: Dist,
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
        tmp = _tmp_for(out)
        with _quiet_saves():
            fresh.save_pretrained(str(tmp), safe_serialization=True)
        processor.save_pretrained(str(tmp))
        _replace_dir(tmp, out)
    barrier(d)
    return out


def export_run(kind: str, model: nn.Module, processor: Any, output_dir: Path, d: Dist, *, model_class: Any,
               base: str, build_unsharded: Callable[[], nn.Module]) -> dict[str, str]:
    """`checkpoint.export` for any task: {"adapter": path, "merged": path} for what was written."""
    exports: dict[str, str] = {}
    if kind in ("adapter", "both"):
        exports["adapter"] = str(export_adapter(model, processor, output_dir / "adapter", d,
                                                model_class=model_class, base=base))
    if kind in ("merged", "both"):
        exports["merged"] = str(export_merged(model, processor, output_dir / "merged", d, build_unsharded))
    return exports
