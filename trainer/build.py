"""The model a run trains, built for this rank: where its weights come from and what the engine does to them.

`resolve_model` turns `model.name` into a source (directory or Hub id) and its config; `load_model` loads
pretrained weights (qlora: NF4 as they load) or builds the seeded random init; `build_for_run` applies the
task's freezing, the chunked loss, LoRA or full, gradient checkpointing, the training dtypes and FSDP2.
One process loads the whole model; several build it on the meta device and fill only their shards
(trainer/loading.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog import hub
from automodel.catalog.errors import UserError
from automodel.trainer import distributed, export
from automodel.trainer.config import ModelConfig, TrainConfig
from automodel.trainer.loss import use_chunked_loss
from automodel.trainer.peft import adapt, prepare_quantized
from automodel.trainer.tasks import TaskAdapter, adapter_for

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn


def resolve_model(model: ModelConfig) -> tuple[str, dict[str, Any]]:
    """(where the tokenizer/weights come from: a local model directory or a Hub id, the config dict), from
    the catalog's one resolution (catalog.registry.resolve: catalog names, Hub ids, directories, config.json
    files), with its errors naming `model.name`."""
    from automodel.catalog.registry import resolve

    try:
        resolved = resolve(model.name)
    except UserError as err:
        hint = err.hint
        if "/" in model.name and not Path(model.name).expanduser().exists():  # a Hub id: gated ones need a login
            login = f"gated models need {hub.LOGIN} and accepting the license"
            hint = f"{hint}; {login}" if hint else login
        raise UserError(err.message, field="model.name", hint=hint) from None
    if resolved.source == "path":
        path = Path(model.name).expanduser()
        return str(path if path.is_dir() else path.parent), resolved.config
    source = resolved.hf_id or model.name
    if resolved.source == "catalog":  # its config is stored; the tokenizer and weights still come from the Hub
        hub.require_reachable(source, field="model.name")  # at once, not after five retries per file
    return source, resolved.config

def load_model(cfg: TrainConfig, source: str, config: dict[str, Any], *, device: str, cuda: bool,
               base_dir: Path | None = None, write_base: bool = False) -> nn.Module:
    """Pretrained weights through transformers (qlora: quantised to NF4 as they load), or a random init from
    the config with `cfg.seed` (qlora: saved to `base_dir` when `write_base` or none is there yet, then
    loaded from there quantised)."""
    import torch

    dtype = load_dtype(cfg, cuda)
    quantize: dict[str, Any] = {}
    if cfg.peft.method == "qlora":  # NF4 weights straight onto this process's GPU (or the CPU); the rest bf16
        from automodel.trainer.modeling import import_bitsandbytes_offline, qlora_quantization_config

        import_bitsandbytes_offline()
        dtype = torch.bfloat16
        quantize = {"quantization_config": qlora_quantization_config(),
                    "device_map": {"": torch.cuda.current_device() if cuda else "cpu"}}
        if cfg.model.init == "random":
            base_dir = base_dir or Path(cfg.output_dir) / export.BASE_DIR
            source = str(_random_base(cfg, config, base_dir, rewrite=write_base))
    from automodel.catalog.architecture import attention_implementation

    attn = attention_implementation(str(config.get("model_type")), cfg.model.attn_implementation)
    if cfg.model.init == "random" and not quantize:
        from automodel.trainer.modeling import build_model

        model = build_model(config, device=device, dtype=dtype, seed=cfg.seed, attn_implementation=attn)
    else:
        try:
            model = adapter_for(cfg.task).model_class().from_pretrained(
                source, dtype=dtype, attn_implementation=attn,
                trust_remote_code=cfg.model.trust_remote_code, **quantize)
        except Exception as err:
            raise UserError(f"cannot load weights of {source!r}: {str(err).splitlines()[0]}", field="model.name",
                            hint=f"go online once to cache them (gated models need {hub.LOGIN}), "
                            "or set model.init=random to train from a config alone") from None
    model.config.use_cache = False
    return model

def build_for_run(cfg: TrainConfig, task: TaskAdapter, source: str, model_config: dict[str, Any],
                  d: distributed.Dist, precision: str, *,
                  on_base: Callable[[nn.Module | None], Any] | None = None) -> nn.Module:
    """The model the loop trains, on this rank's device: the base (pretrained or seeded random), the task's
    freezing, LoRA or full, gradient checkpointing, training dtypes, FSDP2 with more than one process.

    One process loads the whole model on the CPU and moves it. Several build it on the meta device and fill
    only their own shards (trainer/loading.py), so no process holds the whole model. `on_base`, when given,
    is called on every rank with the unadapted base where one process holds it whole (None on the others):
    the saved random base (trainer/export.py)."""
    import torch

    on_cuda = d.device.type == "cuda"
    grad_ckpt = cfg.distributed.activation_checkpointing
    sharded = d.world > 1  # strategy is fsdp2 here (DistributedConfig.check_world_size)
    if cfg.peft.method == "qlora":  # one process; placed, frozen and cast by bitsandbytes + peft already
        return _unsharded(cfg, task, source, model_config, on_cuda, on_base=on_base)

    def wrap(base: nn.Module) -> nn.Module:
        """What the engine does to a base model, on the meta device or a real one."""
        from automodel.trainer.modeling import cast_for_training, enable_grad_ckpt, shard_model

        task.prepare_model(base, cfg)
        use_chunked_loss(base, cfg.distributed.chunked_loss)
        model = adapt(base, cfg.peft)
        if grad_ckpt:
            enable_grad_ckpt(model)
        if on_cuda:
            cast_for_training(model, precision)
        if sharded:
            shard_model(model, d.mesh, precision=precision, cpu_offload=cfg.distributed.cpu_offload)
        return model

    from automodel.trainer.loading import init_lora

    if not sharded:
        base = load_model(cfg, source, model_config, device="cpu", cuda=on_cuda)
        if on_base is not None:
            on_base(base)
        model = wrap(base)
        init_lora(model, cfg.seed)  # from the seed alone: the adapters of every world size (trainer/loading.py)
        return model.to(d.device)  # one process: cpu_offload needs 2+ (DistributedConfig.check_world_size)
    from automodel.catalog.architecture import attention_implementation
    from automodel.catalog.params import hf_config_from_dict, model_class_for
    from automodel.trainer.loading import meta_model, sharded_model

    hf_config = hf_config_from_dict(model_config)
    # the concrete class for the config (a task's model_class() may be a from_pretrained dispatcher)
    meta = meta_model(model_class_for(model_config), hf_config, dtype=load_dtype(cfg, on_cuda),
                      attn_implementation=attention_implementation(hf_config.model_type, cfg.model.attn_implementation),
                      trust_remote_code=cfg.model.trust_remote_code)
    offload = cfg.distributed.cpu_offload  # FSDP2 keeps the shards in host memory
    return sharded_model(meta, wrap, source=None if cfg.model.init == "random" else source,
                         load_base=lambda: load_model(cfg, source, model_config, device="cpu", cuda=on_cuda),
                         seed=cfg.seed, device=torch.device("cpu") if offload else d.device, d=d,
                         log=lambda line: print(line, flush=True) if d.is_main else None, on_base=on_base)

def _unsharded(cfg: TrainConfig, task: TaskAdapter, source: str, model_config: dict[str, Any],
               on_cuda: bool, *, on_base: Callable[[nn.Module | None], Any] | None = None) -> nn.Module:
    """The base with the task's freezing and LoRA (or QLoRA's preparation), on the CPU (qlora: its GPU)."""
    # qlora from a random init: load_model writes the seeded base first when the run keeps a new one
    base = load_model(cfg, source, model_config, device="cpu", cuda=on_cuda, write_base=on_base is not None)
    task.prepare_model(base, cfg)
    if on_base is not None:  # before adapters go on: the weights an exported adapter is loaded onto
        on_base(base)
    use_chunked_loss(base, cfg.distributed.chunked_loss)
    grad_ckpt = cfg.distributed.activation_checkpointing
    return adapt(prepare_quantized(base, cfg.peft, grad_ckpt=grad_ckpt), cfg.peft)


def _random_base(cfg: TrainConfig, config: dict[str, Any], out: Path, *, rewrite: bool) -> Path:
    """The seeded random init saved as a pretrained model (safetensors + config) in `out`, for qlora to
    quantise as it loads: bitsandbytes quantises weights on their way in, not a model already built.
    Written by a fresh start (the seed or config may have changed) or when missing; a resumed run loads
    the same file. It is also the base the exported adapter names (trainer/export.py, BASE_DIR)."""
    if rewrite or not export.has_base(out):
        from automodel.trainer.modeling import build_model

        model = build_model(config, device="cpu", seed=cfg.seed)
        tmp = export.tmp_for(out)
        with export.quiet_saves():
            model.save_pretrained(str(tmp), safe_serialization=True)
        export.replace_dir(tmp, out)
    return out


def load_dtype(cfg: TrainConfig, cuda: bool) -> torch.dtype:
    """The dtype weights load in: bf16 on CUDA unless model.dtype says fp32; fp32 on the CPU."""
    import torch

    return torch.bfloat16 if cuda and cfg.model.dtype in ("bf16", "auto") else torch.float32
