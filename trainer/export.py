"""Export the trained model: the LoRA adapter in PEFT format and/or the merged model as HF safetensors;
and, for a run from `model.init: random`, its initial base weights (`OUTPUT_DIR/base`).

One path for every task: `export_run` takes the task's processor (a tokenizer or a multimodal processor:
both have `save_pretrained`) and the task's Auto model class, and writes what `checkpoint.export` asks.
Exports stand on their own: the adapter's `base_model_name_or_path` names a base that loads in a new
process (the Hub id, a local model directory as an absolute path, or the run's saved random base), so
`AutoPeftModel.from_pretrained(OUT/adapter)` needs nothing but that directory. The adapter is gathered
on rank 0 through the same state-dict API as checkpoints; the merged model is streamed, one weight at a
time, into files of at most MAX_SHARD_BYTES, so rank 0 never holds more than one file's tensors and
nothing is built or loaded again. The optimizer state is never gathered. One process and FSDP2 shards
alike work; every rank must call the exports; only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.memory.host import EXPORT_FILE_BYTES
from automodel.trainer.checkpoint import model_state
from automodel.trainer.distributed import Dist, barrier

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_SHARD_BYTES = EXPORT_FILE_BYTES  # merged exports: files of at most 5 GiB (the host estimate counts one)
BASE_DIR = "base"  # under output_dir: the initial weights of a random-init run
ADAPTER_NAME = "default"  # peft's name for the one adapter a run trains


@contextmanager
def quiet_saves() -> Iterator[None]:
    """No "Writing model shards" bar per export: the run's own lines say what was written."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def tmp_for(out: Path) -> Path:
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
        tmp = tmp_for(out)
        use_cache = model.config.use_cache
        model.config.use_cache = True  # as a loaded model has it; training turned it off
        try:
            with quiet_saves():
                model.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            model.config.use_cache = use_cache
        processor.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    barrier(d)
    return out


def export_adapter(model: nn.Module, processor: Any, out: Path, d: Dist, *, model_class: Any, base: str) -> Path:
    """Write `out` (adapter_config.json + adapter_model.safetensors + processor). `base` becomes the
    adapter's `base_model_name_or_path`, and `model_class` (the task's Auto class) its auto mapping, so
    `AutoPeftModel.from_pretrained(out)` rebuilds base + adapter from this directory alone."""
    state = model_state(model, trainable_only=True)
    if d.is_main:
        tmp = tmp_for(out)
        config = model.peft_config[ADAPTER_NAME]
        config.base_model_name_or_path = base
        # peft keeps only the adapter keys of `state_dict` and strips the adapter name, as for a plain save.
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        adapter_config = tmp / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        data["auto_mapping"] = {"base_model_class": model_class.__name__, "parent_library": model_class.__module__}
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        processor.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    barrier(d)
    return out


def export_merged(model: nn.Module, processor: Any, out: Path, d: Dist, *, dtype: torch.dtype,
                  max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write `out` as a plain transformers model: LoRA merged into the base weights, safetensors files of at
    most `max_shard_bytes` (one `model.safetensors`, or numbered files and an index).

    Streamed: weights are gathered one at a time (every rank joins each all-gather), a LoRA-wrapped weight
    with its adapter (W + scaling x B @ A, in fp32), and rank 0 keeps at most one file's tensors before it
    writes them. Nothing else is gathered or built: not the optimizer, not a second copy of the model."""
    from automodel.trainer.loading import hf_key
    from automodel.trainer.modeling import base_model

    merges = _lora_merges(model)
    tmp = tmp_for(out) if d.is_main else None
    writer = _ShardWriter(tmp, max_shard_bytes) if tmp is not None else None
    for name, tensor in _exported_tensors(model):  # the same order on every rank: the gathers pair up
        full = _full(tensor)
        merge = merges.get(name)
        if merge is not None:
            lora_a, lora_b, scaling = merge
            full_a, full_b = _full(lora_a), _full(lora_b)
            if writer is not None:
                full = full.float() + scaling * (full_b.float() @ full_a.float())
        if writer is not None:
            writer.add(hf_key(name), full.detach().to("cpu", dtype=dtype if full.is_floating_point() else full.dtype))
    if writer is not None and tmp is not None:
        writer.close()
        base = base_model(model)
        config = copy.deepcopy(base.config)
        config.use_cache = True  # training turned the KV cache off; generation wants it back
        config.dtype = dtype
        config.save_pretrained(str(tmp))
        generation = getattr(base, "generation_config", None)
        if generation is not None and base.can_generate():
            generation.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    barrier(d)
    return out


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: an all-gather for a FSDP2 shard (collective), the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _exported_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base parameter once (a tied head is saved as its embedding, as save_pretrained does) and every
    persistent buffer, in module order; the LoRA adapters are merged, not exported."""
    from automodel.trainer.loading import is_lora_name

    for name, param in model.named_parameters():
        if not is_lora_name(name):
            yield name, param
    for module_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf_name not in module._non_persistent_buffers_set:
                yield (f"{module_name}.{buf_name}" if module_name else buf_name), buf


def _lora_merges(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{live name of a LoRA-wrapped linear's base weight: (A weight, B weight, scaling)}."""
    merges = {}
    for module_name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if getattr(module, "base_layer", None) is None or lora_a is None or ADAPTER_NAME not in lora_a:
            continue
        merges[f"{module_name}.base_layer.weight"] = (
            lora_a[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight, module.scaling[ADAPTER_NAME])
    return merges


class _ShardWriter:
    """Tensors into safetensors files of at most `limit` bytes; `close` names them as save_pretrained does."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(parents=True)
        self.directory, self.limit = directory, limit
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.total = 0
        self.files: list[list[str]] = []

    def add(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.pending and self.pending_bytes + size > self.limit:
            self._flush()
        self.pending[key] = value.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, str(self.directory / f"part-{len(self.files):05d}"), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.files:
            self._flush()
        count = len(self.files)
        if count == 1:
            (self.directory / "part-00000").rename(self.directory / "model.safetensors")
            return
        weight_map = {}
        for i, keys in enumerate(self.files):
            name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.directory / f"part-{i:05d}").rename(self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


EXPORT_DIRS = {"adapter": ("adapter",), "merged": ("merged",), "both": ("adapter", "merged"), "none": ()}


def export_run(kind: str, model: nn.Module, processor: Any, output_dir: Path, d: Dist, *, model_class: Any,
               base: str, dtype: torch.dtype) -> dict[str, str]:
    """`checkpoint.export` for any task: {"adapter": path, "merged": path} for what was written (the
    directories EXPORT_DIRS[kind] under output_dir)."""
    exports: dict[str, str] = {}
    if "adapter" in EXPORT_DIRS[kind]:
        exports["adapter"] = str(export_adapter(model, processor, output_dir / "adapter", d,
                                                model_class=model_class, base=base))
    if "merged" in EXPORT_DIRS[kind]:
        exports["merged"] = str(export_merged(model, processor, output_dir / "merged", d, dtype=dtype))
    return exports
