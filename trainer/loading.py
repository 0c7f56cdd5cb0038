"""The model of a multi-process run, built so that no process holds the whole of it.

With more than one process the recipe builds the model on the meta device (parameters without storage;
buffers real: rotary tables, position ids and embedding scales are small and computed at construction),
lets `wrap` do to it what one process does (task freezing, LoRA, gradient checkpointing, training dtypes,
FSDP2), allocates only this rank's shards (`to_empty`), restores the buffers and then fills the weights:

- **from the safetensors files** (pretrained weights whose file names, after transformers' renames of
  older checkpoint layouts such as a VLM's, cover every base weight): file by
  file, memory-mapped; each rank copies the rows of its dim-0 shards out of the mapping, so a process
  holds its shards plus the pages of the one file being read that its rows cover. No collective, and no
  rank reads what it does not keep;
- **broadcast from rank 0** (random init; `.bin` checkpoints; checkpoints whose tensors transformers
  converts while loading, beyond renaming them): rank 0 builds the one-process model on the CPU (`load_base`: the seeded init or
  `from_pretrained`) and broadcasts it one tensor at a time; the other ranks hold their shards plus one
  full tensor. Rank 0 holds the whole base in host memory while it does, which is what one process does
  anyway; the log line names the path taken.

docs/training.md ("Loading on many processes") has the measured comparison behind this choice.

LoRA adapters are initialised by `init_lora` from the seed alone (A kaiming-uniform as peft does, B zero),
in one process as well, so adapters do not depend on the world size or on the loading path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.trainer.distributed import Dist

if TYPE_CHECKING:
    import torch
    from torch import nn

_PEFT_PREFIX = "base_model.model."
_TRAINED_COPY = ".modules_to_save.default."  # peft's trainable copy of a module (a VLM's projector)


def hf_key(name: str) -> str:
    """The checkpoint key of a live parameter name: peft's wrapper prefix, `base_layer` and the
    `original_module` of a `modules_to_save` wrapper removed."""
    return name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".").replace(".original_module.", ".")


def base_name(name: str) -> str:
    """The unwrapped model's name of a live parameter or buffer, peft's trainable copy included (its
    `modules_to_save.default` names the same tensor as the original's)."""
    return hf_key(name).replace(_TRAINED_COPY, ".")


def is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name


def meta_model(model_class: type, hf_config: Any, *, dtype: torch.dtype, attn_implementation: str,
               trust_remote_code: bool) -> nn.Module:
    """The task's model for `hf_config`, parameters on the meta device and buffers computed on the CPU."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(hf_config, dtype=dtype, attn_implementation=attn_implementation,
                                        trust_remote_code=trust_remote_code)
    # transformers ties the output head to the embeddings when it initialises weights, which it skips for
    # parameters without storage: tie them here, or a tied model would train two separate matrices
    model.tie_weights()
    model.config.use_cache = False
    return model


def base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{checkpoint key: live tensor} for every non-LoRA parameter and persistent buffer (tied weights
    appear under each of their names, as the same tensor)."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if not is_lora_name(name) and _TRAINED_COPY not in name:  # the copy is filled from its original
            out[hf_key(name)] = param
    for module_name, module in model.named_modules(remove_duplicate=False):
        if _TRAINED_COPY in f".{module_name}.":  # the copy's buffers are filled from its original's too
            continue
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf_name not in module._non_persistent_buffers_set:
                out[hf_key(f"{module_name}.{buf_name}" if module_name else buf_name)] = buf
    return out


def copy_full_into(target: torch.Tensor, full: torch.Tensor, rank: int, world: int) -> None:
    """Copy this rank's part of the full tensor `full` into `target` (a FSDP2 DTensor sharded on dim 0
    over a 1-D mesh, or a plain tensor that takes all of it)."""
    import torch
    from torch.distributed.tensor import DTensor, Shard

    with torch.no_grad():
        if not isinstance(target, DTensor):
            target.copy_(full)
            return
        if tuple(target.placements) != (Shard(0),):
            raise NotImplementedError(f"placements {target.placements}: only FSDP2's Shard(0) is supported")
        local = target.to_local()
        if local.numel() == 0:
            return
        start = rank * math.ceil(full.shape[0] / world)  # torch.chunk's split, which FSDP2 uses
        local.copy_(full[start : start + local.shape[0]])


def safetensors_files(source: str) -> list[Path]:
    """The model's safetensors files (a local directory, or the Hub cache of an id); [] when there are none."""
    path = Path(source)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
        except Exception:  # offline without these files cached: the broadcast path loads as one process does
            return []
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    return sorted(path.glob("*.safetensors"))


def file_keys(files: list[Path]) -> set[str]:
    """Every tensor name in the files (headers only)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def checkpoint_names(model: nn.Module, keys: set[str]) -> dict[str, str] | None:
    """{file key: the model's key} for the file keys transformers loads into `model` (the unwrapped meta
    model), through transformers' own renamings: a VLM's checkpoints (and what `save_pretrained` writes)
    keep the layout before transformers 5 (Gemma 3's `language_model.model.*`, Qwen2-VL's `model.*` for
    `model.language_model.*`). None when a key needs more than a rename (experts fused as they load):
    the broadcast path then loads through transformers itself. Where these private transformers helpers
    are not what this version has (the pinned range has them; a later one may not), the file keys are
    taken as they are: checkpoints in the model's own layout still load from the files."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError):
        return {key: key for key in keys}
    return _renamed(model, keys, transforms, WeightRenaming, rename_source_key)


def _renamed(model: nn.Module, keys: set[str], transforms: Any, renaming_type: type,
             rename_source_key: Callable[..., Any]) -> dict[str, str] | None:
    """checkpoint_names' mapping through transformers' renamings (None when a key is converted)."""
    renamings = [t for t in transforms if isinstance(t, renaming_type)]
    converters = [t for t in transforms if not isinstance(t, renaming_type)]
    known = dict.fromkeys(model.state_dict(), True)
    prefix = getattr(model, "base_model_prefix", None)
    names: dict[str, str] = {}
    for key in keys:
        renamed, converted = rename_source_key(key, renamings, converters, prefix, known)
        if converted is not None:
            return None
        if renamed not in known and key in known:  # as transformers: a key already in the model's layout
            renamed = key
        names[key] = renamed
    return names


def covers(targets: dict[str, torch.Tensor], keys: set[str]) -> bool:
    """Whether `keys` name every distinct live tensor at least once (a tied head needs no key of its own)."""
    named = {id(t) for k, t in targets.items() if k in keys}
    return all(id(t) in named for t in targets.values())


def load_files(targets: dict[str, torch.Tensor], files: list[Path], d: Dist,
               names: dict[str, str] | None = None) -> None:
    """Fill `targets` from the safetensors files, one memory-mapped file at a time; `names` maps a file's
    keys to the targets' (`checkpoint_names`; the same names when None)."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                name = key if names is None else names.get(key, key)
                if name in targets:
                    # a slice reads only the rows this rank keeps
                    copy_full_into(targets[name], _rows(handle, key, targets[name], d), d.rank, d.world)


def _rows(handle: Any, key: str, target: torch.Tensor, d: Dist) -> torch.Tensor:
    """The full tensor `key` as a view the copy can slice: safetensors' lazy slice when sharded, so only
    this rank's rows are read from the file."""
    from torch.distributed.tensor import DTensor

    if not isinstance(target, DTensor) or target.dim() == 0:
        return handle.get_tensor(key)
    return _LazyRows(handle.get_slice(key))


class _LazyRows:
    """A safetensors slice that `copy_full_into` indexes like a tensor: `shape`, and `[a:b]` reads rows."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.shape = tuple(view.get_shape())

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.view[rows]


def broadcast_from_rank0(targets: dict[str, torch.Tensor], source: dict[str, torch.Tensor] | None,
                         d: Dist) -> None:
    """Fill `targets` from rank 0's full `source` (None elsewhere), one tensor at a time, in key order."""
    import torch
    import torch.distributed as dist

    done: set[int] = set()
    for key in sorted(targets):
        target = targets[key]
        if id(target) in done:  # a tied weight, filled through its other name
            continue
        done.add(id(target))
        device = d.device if d.device.type == "cuda" else torch.device("cpu")  # nccl takes GPU tensors
        if d.is_main:
            if source is None or key not in source:
                raise KeyError(f"rank 0's model has no tensor {key!r}")
            full = source[key].detach().to(device=device, dtype=target.dtype).contiguous()
        else:
            full = torch.empty(tuple(target.shape), dtype=target.dtype, device=device)
        dist.broadcast(full, src=0)
        copy_full_into(target, full, d.rank, d.world)


def lora_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, param in model.named_parameters():
        if is_lora_name(name):
            yield name, param


def init_lora(model: nn.Module, seed: int) -> None:
    """Initialise every LoRA A (kaiming-uniform, a=sqrt(5), as peft) and B (zeros) from `seed` alone, full
    tensors drawn in name order and each rank keeping its shard: the same values for any world size."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rank, world = _rank_world()
    for _name, param in sorted(lora_tensors(model)):
        if ".lora_B." in _name:
            full = torch.zeros(tuple(param.shape))
        else:
            full = torch.empty(tuple(param.shape))
            fan_in = full.shape[1] if full.dim() > 1 else full.shape[0]
            # kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) * fan_in)) = 1 / sqrt(fan_in)
            bound = 1.0 / math.sqrt(fan_in)
            full.uniform_(-bound, bound, generator=generator)
        copy_full_into(param, full, rank, world)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded_model(meta: nn.Module, wrap: Callable[[nn.Module], nn.Module], *, source: str | None,
                  load_base: Callable[[], nn.Module], seed: int, device: torch.device, d: Dist,
                  log: Callable[[str], None], on_base: Callable[[nn.Module | None], Any] | None = None) -> nn.Module:
    """`wrap(meta)` with this rank's shards allocated on `device` and filled (see the module docstring).
    `source` is the pretrained model's directory or id (None for random init). `on_base` is called on every
    rank with rank 0's whole base (None elsewhere) when the broadcast path builds one."""
    import torch

    # buffers computed at construction (rotary tables, position ids, Gemma's embedding scale): to_empty
    # discards them; restored by their unwrapped name, so a module peft wraps whole (a VLM's vision tower
    # under model.vision=full) gets them in its original and in its trainable copy
    buffers = {name: buf.detach().clone() for name, buf in meta.named_buffers()}
    files = safetensors_files(source) if source is not None else []
    names = checkpoint_names(meta, file_keys(files)) if files else None  # before peft wraps its modules
    model = wrap(meta)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            saved = buffers.get(base_name(name))
            if saved is None:
                raise RuntimeError(f"buffer {name} of the sharded model has no value from the meta build")
            buf.copy_(saved)
    targets = base_tensors(model)
    if names is not None and covers(targets, set(names.values())):
        log(f"loading weights shard by shard from {len(files)} safetensors file(s)")
        load_files(targets, files, d, names)
    else:
        log("loading weights on rank 0 and broadcasting them tensor by tensor"
            + ("" if source is None else " (the safetensors names do not match the model's)"))
        base = load_base() if d.is_main else None
        if on_base is not None:
            on_base(base)
        broadcast_from_rank0(targets, None if base is None else base.state_dict(), d)
        del base
    _copy_trained_copies(model)
    init_lora(model, seed)
    return model


def _copy_trained_copies(model: nn.Module) -> None:
    """peft's `modules_to_save` copies start equal to their originals (sharded alike: same module, same unit),
    persistent buffers included."""
    import torch
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, param in params.items():
            if _TRAINED_COPY in name:
                source = params[name.replace(_TRAINED_COPY, ".original_module.")]
                local = param.to_local() if isinstance(param, DTensor) else param
                local.copy_(source.to_local() if isinstance(source, DTensor) else source)
