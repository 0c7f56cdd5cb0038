"""What the engine does to a model, in one place.

The trainer (trainer/recipe.py) and the memory simulator (trainer/simulate.py) both build, adapt,
checkpoint, shard and score models through these functions, so the simulated step and the real step
cannot drift apart. Torch, transformers and peft are imported inside the functions: importing this
module is cheap, but only torch-side code should call it.

Engine choices made here (the analytic estimator models the same ones):
- attention: transformers' `sdpa` implementation (`eager` for the few architectures without one);
- dtypes (`cast_for_training`): `fp32` and `bf16` put every parameter in that dtype; `bf16-mixed` keeps
  trainable parameters in fp32 (master weights; FSDP2 all-gathers them in bf16) and frozen parameters
  in bf16 (they are never updated, so a fp32 master copy would only cost memory);
- LoRA: peft `LoraConfig` on the language model's linears (never the output head; on VLMs never the
  vision tower), base frozen, adapters A (r x in) and B (out x r) without bias;
- QLoRA: the pretrained base loads through bitsandbytes as 4-bit NF4 with double quantisation and bf16
  compute (`qlora_quantization_config`), `prepare_for_kbit_training` freezes it and upcasts the
  non-quantised parameters (norms, embeddings, head) to fp32, then LoRA as above;
- gradient checkpointing: transformers' `activation_checkpointing_enable` with `use_reentrant=False`
  (every decoder block is recomputed in backward);
- sharding: FSDP2 `fully_shard` on every decoder block, then on the root, with more than one rank
  (one GPU trains the plain model); the forward runs under `compute_autocast`;
- optimizer (`build_optimizer`, the recipe's and the simulator's): torch's fused AdamW on CUDA (no
  state-sized temporary), foreach AdamW on CPU, foreach SGD, bitsandbytes for 8-bit;
- loss: not here but in trainer/loss.py (summed fp32 cross-entropy at target tokens, the output head
  applied a chunk of tokens at a time), which the task adapters and the simulator call.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

PrecisionName = Literal["bf16-mixed", "bf16", "fp32"]
ATTN_IMPLEMENTATION = "sdpa"

# Attribute paths of the language model inside multimodal wrappers (transformers 5 layout). LoRA
# targets are looked up under the first one present; text-only and speech models use the whole model.
_LANGUAGE_MODEL_PATHS: tuple[str, ...] = ("model.language_model", "language_model")


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes (if installed) without its Hub kernel fetch and the warning that follows.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 tries at import to download a 4-bit GEMM kernel from
    the Hub through the `kernels` package (kernels-community/quantization-bitsandbytes) and logs
    "Failed to load CPU gemm_4bit_forward ..." when it cannot; it then uses its own CPU kernels. The
    engine never downloads code at run time: the `kernels` import is blocked while bitsandbytes loads
    and that one logger is quiet. peft and transformers import bitsandbytes, so every engine path that
    imports them calls this first."""
    import importlib.util
    import logging
    import sys

    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level, kernels = logger.level, sys.modules.get("kernels")
    logger.setLevel(logging.ERROR)
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `from kernels import ...` -> ImportError
    try:
        import bitsandbytes  # noqa: F401
    finally:
        logger.setLevel(level)
        if kernels is None:
            del sys.modules["kernels"]
        else:  # transformers had imported it already: put it back
            sys.modules["kernels"] = kernels


def require_8bit_optimizer() -> None:
    """adamw-8bit's one need, checked before a run loads anything (and again where the optimizer is built)."""
    import importlib.util

    from automodel.catalog.errors import UserError

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("optimizer adamw-8bit needs bitsandbytes, which is not installed", field="optimizer.name",
                        hint="pip install bitsandbytes, or use optimizer.name=adamw")


def build_model(
    config: dict[str, Any],
    *,
    device: str | torch.device = "meta",
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    attn_implementation: str = ATTN_IMPLEMENTATION,
) -> nn.Module:
    """The transformers model for a config dict, on `device` (random init unless meta), in `dtype` (fp32),
    with `attn_implementation` (sdpa becomes eager for the few architectures without an SDPA path:
    catalog.architecture.attention_implementation, the one list)."""
    import torch

    from automodel.catalog.architecture import attention_implementation
    from automodel.catalog.params import hf_config_from_dict, model_class_for

    hf_config = hf_config_from_dict(config)
    model_cls = model_class_for(config)
    if seed is not None:
        torch.manual_seed(seed)
    attn = attention_implementation(hf_config.model_type, attn_implementation)
    with torch.device(device):
        model = model_cls.from_config(hf_config, dtype=dtype or torch.float32, attn_implementation=attn)
    model.train()
    return model


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: every outermost `nn.ModuleList` of same-class, non-leaf modules.

    That is the decoder layers of a language model, plus the vision blocks of a VLM and the encoder and
    decoder layers of Whisper; lists nested inside a block (e.g. MoE experts) are part of their block.
    """
    from torch import nn

    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(True for _ in module[0].children()):
            continue
        taken.append(name)
        blocks.extend(module)
    return blocks


def language_model(model: nn.Module) -> nn.Module:
    """The text decoder inside a multimodal wrapper, else the model itself."""
    base = base_model(model)
    for path in _LANGUAGE_MODEL_PATHS:
        node: Any = base
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if node is not None:
            return node
    return base


def lora_target_names(model: nn.Module, targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """Full names of the linears LoRA wraps: `all-linear` or those whose last name part is listed."""
    from torch import nn

    base = base_model(model)
    scope = language_model(base)
    output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    scope_ids = {id(m) for m in scope.modules()}
    wanted = None if targets == "all-linear" else set(targets)
    names = []
    for name, module in base.named_modules():
        if not isinstance(module, nn.Linear) or id(module) not in scope_ids or module is output:
            continue
        if wanted is None or name.rsplit(".", 1)[-1] in wanted:
            names.append(name)
    return names


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: str | list[str] | tuple[str, ...] = "all-linear",
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """Wrap the language model's linears with peft LoRA adapters; everything else is frozen, except
    `modules_to_save` (full names), which train whole and are saved in the adapter (peft's option)."""
    import_bitsandbytes_offline()
    from peft import LoraConfig, get_peft_model

    from automodel.catalog.errors import UserError

    names = lora_target_names(model, targets)
    if not names:
        raise UserError(
            f"no linear layer of this model matches LoRA targets {targets!r}",
            field="lora_targets",
            hint="use `all-linear` or module names such as q_proj,v_proj",
        )
    # Exact full names: peft treats a list entry as a name suffix, so these match only themselves.
    lora_config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none",
        modules_to_save=modules_to_save or None,
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers-5-deprecated alias; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config)


def trainable_outside_language_model(model: nn.Module) -> list[str]:
    """Full names of the outermost modules outside the language model whose parameters all train (a VLM's
    vision tower or projector that the task left trainable); [] for a text-only or speech model."""
    base = base_model(model)
    scope = language_model(base)
    if scope is base:
        return []
    inside = {id(m) for m in scope.modules()}
    names: list[str] = []
    for name, module in base.named_modules():
        params = list(module.parameters())
        if (not name or id(module) in inside or any(name.startswith(n + ".") for n in names) or not params
                or any(id(m) in inside for m in module.modules())):
            continue
        if all(p.requires_grad for p in params):
            names.append(name)
    return names


def qlora_quantization_kwargs() -> dict[str, Any]:
    """The bitsandbytes settings of QLoRA (Dettmers et al. 2023): NF4, double quantisation, bf16 compute."""
    import torch

    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }


def qlora_quantization_config() -> Any:
    """transformers' `BitsAndBytesConfig` for `from_pretrained(..., quantization_config=...)` (building it
    needs no bitsandbytes; loading with it does)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**qlora_quantization_kwargs())


def prepare_for_kbit_training(model: nn.Module, *, grad_ckpt: bool) -> nn.Module:
    """peft's preparation of a 4-bit model: base frozen, non-quantised parameters in fp32, and (with
    `grad_ckpt`) non-reentrant gradient checkpointing, as `enable_grad_ckpt` sets it."""
    import_bitsandbytes_offline()
    from peft import prepare_model_for_kbit_training

    with warnings.catch_warnings():  # peft 0.21 calls transformers-5-deprecated aliases; not the user's concern
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_ckpt, gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def cast_for_training(model: nn.Module, precision: PrecisionName) -> nn.Module:
    """Parameter dtypes the engine trains with (see the module docstring); buffers are left alone."""
    import torch

    for param in model.parameters():
        if precision == "fp32" or (precision == "bf16-mixed" and param.requires_grad):
            param.data = param.data.to(torch.float32)
        else:
            param.data = param.data.to(torch.bfloat16)
    return model


def enable_grad_ckpt(model: nn.Module) -> nn.Module:
    """Recompute every decoder block in backward (transformers' non-reentrant checkpointing)."""
    base = base_model(model)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def shard_model(
    model: nn.Module,
    mesh: Any,
    *,
    precision: PrecisionName,
    cpu_offload: bool = False,
) -> nn.Module:
    """FSDP2: `fully_shard` every decoder block, then the root, over a 1-D device mesh."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16-mixed"
        else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, offload_policy=offload)
    return model


def build_optimizer(
    model: nn.Module,
    *,
    name: Literal["adamw", "adamw-8bit", "sgd"],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters: the recipe's and the simulator's (one builder).

    AdamW is torch's fused kernel (`fused`: the recipe on CUDA, the simulator, which measures a CUDA
    step): one kernel per parameter group and no state-sized temporary, where the foreach kernels
    allocate one (sqrt of exp_avg_sq) during the step. With `fused=False` (the recipe on CPU, whose
    pinned losses come from the foreach kernels) AdamW and SGD use the foreach kernels. adamw-8bit is
    bitsandbytes' AdamW8bit (its CPU kernels too; one process: it steps whole tensors)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        kernel = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, foreach=True)
    require_8bit_optimizer()
    import_bitsandbytes_offline()
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def compute_autocast(precision: PrecisionName, device_type: str) -> Any:
    """The autocast region the training forward runs in: bf16 unless the run is fp32. Under FSDP2 the
    weights already arrive in bf16 (MixedPrecisionPolicy); on one GPU (no FSDP2) autocast casts the fp32
    trainable weights, and its cast cache holds those bf16 copies until the forward ends."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision != "fp32")


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself) (PeftModel -> LoraModel -> model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
