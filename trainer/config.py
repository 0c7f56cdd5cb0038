"""The training config: one typed, validated description of a fine-tuning run (torch-free).

`TrainConfig` is what `automodel finetune` reads from YAML, what the advisor writes, and what the engine
(`trainer/recipe.py`) executes. Defaults live here and nowhere else. Every cross-field rule is one
validator that names the dotted YAML path it checks. `to_plan()` maps the run onto the estimator's
`Plan`, so dry-run, recommend and the finished run describe the same thing. The `data` section is
trainer/config_data.py, its column mappings (`data.instruction|completion|chat|audio|image_text`)
trainer/data_formats.py.

Secrets: values interpolated from environment variables whose names look secret (TOKEN, KEY, SECRET,
PASSWORD) are remembered per path; `dump_yaml` writes the unresolved `${NAME}` back and scrubs any
secret value that still shows up, and `repr()` goes through the same redaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from automodel.catalog.errors import UserError
from automodel.catalog.memory.plan import Plan, lora_targets_from
from automodel.trainer.config_data import DataConfig
from automodel.trainer.data_formats import Section, rule
from automodel.trainer.overrides import build_config_data, redact_text, set_path, validate


class ModelConfig(Section):
    name: str = Field(description="Catalog name (e.g. `llama-3.2-1b`), HF id (`meta-llama/Llama-3.2-1B`) or local "
                      "directory / config.json path.")
    dtype: Literal["bf16", "fp32", "auto"] = Field(
        "auto", description="Dtype the weights are loaded in; auto: bf16 on CUDA with bf16 support, else fp32."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the Hub repo (only for repos you trust).")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="pretrained: load weights; random: build from the config with `seed`, no weights "
        "(offline tests and benches).",
    )
    freeze_feature_encoder: bool = Field(
        True, description="CTC speech models (Wav2Vec2, HuBERT): keep the convolutional feature encoder frozen, "
        "as their fine-tuning recipes do; other models ignore it.",
    )
    vision: Literal["frozen", "projector", "full"] = Field(
        "frozen", description="task vlm: what of the vision side trains. frozen: nothing (LoRA/full fine-tuning "
        "train the language model only); projector: the vision-to-text projector too; full: the whole vision tower "
        "and projector (with LoRA they train whole and are saved in the adapter).",
    )


class PeftConfig(Section):
    method: Literal["none", "lora", "qlora"] = Field(
        "lora", description="none: full fine-tuning; lora: LoRA adapters (peft); qlora: LoRA on a 4-bit NF4 base "
        "(bitsandbytes, double quantisation, bf16 compute; one process with the bitsandbytes package, on a CUDA "
        "GPU, or on the CPU for testing; a random init is saved under output_dir/base and quantised from there).",
    )
    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Literal["all-linear"] | tuple[str, ...] = Field(
        "all-linear", description="`all-linear` (every linear layer but the output head) or a list of module names."
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets_from_csv(cls, value: object) -> object:
        return lora_targets_from(value)  # the estimator's Plan reads --lora-targets the same way

    @property
    def adapters(self) -> bool:
        """LoRA adapters train on a frozen base (lora and qlora)."""
        return self.method in ("lora", "qlora")

    @property
    def plan_method(self) -> Literal["full", "lora", "qlora"]:
        """The method as the estimator and the doctor name it (`none` trains every weight: full)."""
        return "full" if self.method == "none" else self.method

    def check_world_size(self, world_size: int) -> None:
        """QLoRA runs in one process: FSDP2 over 4-bit parameters needs bnb_4bit_quant_storage and is untested."""
        if self.method == "qlora" and world_size > 1:
            raise UserError(f"qlora runs in one process, not {world_size}", field="peft.method",
                            hint="use one process (--nproc-per-node 1 --nnodes 1), or peft.method=lora to shard "
                            "with FSDP2")


class DistributedConfig(Section):
    strategy: Literal["fsdp2", "none"] = Field(
        "fsdp2", description="fsdp2: fully_shard each decoder block and the root when world size > 1; none: one process."
    )
    activation_checkpointing: bool = Field(True, description="Recompute each decoder block's activations in backward.")
    offload_activations: bool = Field(
        False, description="Keep the tensors autograd saves in the forward (with activation_checkpointing: each "
        "block's input) in host memory until backward needs them (trainer/offload.py): less GPU memory, more "
        "PCIe traffic.",
    )
    chunked_loss: bool = Field(
        True, description="Compute the output head and cross-entropy a chunk of target tokens at a time, never the "
        "full tokens x vocab logits (trainer/loss.py); false: the plain head and F.cross_entropy.",
    )
    cpu_offload: bool = Field(False, description="FSDP2 CPUOffloadPolicy: sharded params, grads, optimizer on host.")
    mixed_precision: Literal["bf16-mixed", "bf16", "fp32"] = Field(
        "bf16-mixed", description="bf16-mixed: fp32 master weights, bf16 compute; bf16: all bf16; fp32: all fp32. "
        "On CPU the engine computes in fp32.",
    )

    @model_validator(mode="after")
    def _offload_needs_fsdp(self) -> DistributedConfig:
        if self.cpu_offload and self.strategy != "fsdp2":
            raise rule("cpu_offload", "CPU offload is an FSDP2 policy; set distributed.strategy=fsdp2")
        return self

    def check_world_size(self, world_size: int) -> None:
        """Several processes shard with FSDP2, so strategy=none is one process only. CPU offload is an FSDP2
        policy, and one process trains the plain model on its GPU: offload would silently not happen while
        the estimate counts weights, gradients and optimizer state on the host."""
        if self.strategy == "none" and world_size > 1:
            raise UserError(f"{world_size} processes shard the model with FSDP2; strategy none is one process",
                            field="distributed.strategy", hint="set distributed.strategy=fsdp2, or launch one process")
        if self.cpu_offload and world_size == 1:
            raise UserError("CPU offload needs FSDP2, which shards over at least 2 processes; this run has 1",
                            field="distributed.cpu_offload",
                            hint="launch 2+ GPUs (--nproc-per-node), or set it to false and use lora/qlora to fit "
                            "one GPU")


class ScheduleConfig(Section):
    global_batch_size: int = Field(8, ge=1, description="Sequences per optimizer step, summed over all ranks.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per forward/backward.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (give this or epochs).")
    epochs: int | None = Field(None, ge=1, description="Passes over the training data (give this or max_steps).")
    val_every: int | None = Field(None, ge=1, description="Validation loss every N steps; none: only at the end.")
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N steps; none: only the final one.")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N steps.")

    @model_validator(mode="after")
    def _micro_divides_global(self) -> ScheduleConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise rule("global_batch_size", f"{self.global_batch_size} is not a multiple of micro_batch_size "
                       f"{self.micro_batch_size}; use a multiple of {self.micro_batch_size} (e.g. "
                       f"{-(-self.global_batch_size // self.micro_batch_size) * self.micro_batch_size}) or another "
                       "micro_batch_size")
        return self

    @model_validator(mode="after")
    def _one_length(self) -> ScheduleConfig:
        if (self.max_steps is None) == (self.epochs is None):
            raise rule("max_steps", "give exactly one of schedule.max_steps and schedule.epochs")
        return self

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Micro-batches per rank per optimizer step: global / (micro x world)."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise UserError(
                f"{self.global_batch_size} is not divisible by micro_batch_size {self.micro_batch_size} x "
                f"{world_size} processes", field="schedule.global_batch_size",
                hint=f"use a multiple of {per_step}, or change micro_batch_size / the number of processes",
            )
        return self.global_batch_size // per_step


class OptimizerConfig(Section):
    name: Literal["adamw", "adamw-8bit"] = Field(
        "adamw", description="adamw: torch's AdamW (fused kernel on CUDA, foreach on the CPU), two states in the "
        "trainable parameters' dtype (fp32: 8 bytes per parameter); adamw-8bit: bitsandbytes' 8-bit AdamW, two "
        "uint8 states with block scales (about 2 bytes per parameter; full fine-tuning of a 1B model on one GPU "
        "saves ~7 GiB), one process only (its kernels take whole tensors, not FSDP2 shards).",
    )
    lr: float = Field(2e-5, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; none: no clipping.")

    def check_world_size(self, world_size: int) -> None:
        """bitsandbytes' 8-bit AdamW steps whole tensors: FSDP2's sharded parameters (DTensors) fail in it."""
        if self.name == "adamw-8bit" and world_size > 1:
            raise UserError(f"adamw-8bit runs in one process, not {world_size}", field="optimizer.name",
                            hint="use one process (--nproc-per-node 1 --nnodes 1), or optimizer.name=adamw to "
                            "shard the optimizer state with FSDP2")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class LRScheduleConfig(Section):
    kind: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to optimizer.lr over this many steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of optimizer.lr (cosine/linear).")


class CheckpointConfig(Section):
    keep_last: int = Field(2, ge=1, description="Keep the newest N checkpoints, delete older ones.")
    resume: str = Field("auto", description="auto: resume from the latest checkpoint in output_dir if any; never: start "
                        "fresh; or a checkpoint directory path.")
    export: Literal["adapter", "merged", "both", "none"] = Field(
        "adapter", description="At the end write the LoRA adapter (PEFT format), the merged/full model (HF "
        "safetensors; not with qlora), both, or nothing.",
    )
    async_save: bool = Field(
        False, description="Write checkpoints in a background thread while training goes on: each rank first "
        "copies its shard of the trainable weights and optimizer state to host memory (held until the write "
        "ends; the estimate's host RAM counts it), one write in flight at a time. For full fine-tuning, whose "
        "checkpoints take long to write; LoRA checkpoints are small either way.",
    )


class LoggingConfig(Section):
    metrics_file: str = Field("metrics.jsonl", description="File in output_dir, one JSON object per logged step.")
    progress_bar: bool = Field(True, description="Rich progress bar on rank 0.")

    @field_validator("metrics_file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or Path(value).name != value:
            raise ValueError("a file name inside output_dir, without directories")
        return value


class TrainConfig(Section):
    """A fine-tuning run."""

    task: Literal["llm", "vlm", "asr"] = Field("llm", description="Which task adapter runs: llm, vlm or asr.")
    model: ModelConfig = Field(description="What to fine-tune.")
    peft: PeftConfig = Field(default_factory=PeftConfig, description="Full fine-tuning or LoRA.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Sharding and precision.")
    data: DataConfig = Field(description="Training (and validation) data.")
    schedule: ScheduleConfig = Field(description="Batch sizes, length and intervals.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="AdamW settings.")
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig, description="Warmup and decay.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints, resume, export.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and progress output.")
    seed: int = Field(42, ge=0, description="Seed for model init (init=random), data order, dropout.")
    output_dir: str = Field("outputs/run", min_length=1,
                            description="Checkpoints, metrics, exports and the resolved config go here.")

    # dotted path -> unresolved `${NAME}` text, for values interpolated from secret-looking variables
    _secret_templates: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _export_matches_peft(self) -> TrainConfig:
        if self.checkpoint.export in ("adapter", "both") and not self.peft.adapters:
            raise rule("checkpoint.export", f"`{self.checkpoint.export}` needs peft.method=lora or qlora; for full "
                       "fine-tuning use checkpoint.export=merged (the full model) or none")
        return self

    @model_validator(mode="after")
    def _qlora_exports_the_adapter(self) -> TrainConfig:
        # Merging into NF4 weights would round the update away; a dequantised merge would not be the model
        # that trained (its base was the 4-bit one). The adapter loads onto the bf16 base with peft instead.
        if self.peft.method == "qlora" and self.checkpoint.export in ("merged", "both"):
            raise rule("checkpoint.export", "qlora cannot export a merged model (its base is 4-bit); use "
                       "checkpoint.export=adapter and merge it into the bf16 base with peft's merge_and_unload")
        return self

    @model_validator(mode="after")
    def _audio_is_asr(self) -> TrainConfig:
        if (self.task == "asr") != (self.data.format == "audio"):
            fix = "data.format=audio" if self.task == "asr" else f"a {self.data.format} format, or task=asr"
            raise rule("data.format", f"task {self.task} reads data.format {self.data.format}; use {fix}")
        return self

    @model_validator(mode="after")
    def _vlm_fields_need_vlm(self) -> TrainConfig:
        if self.task == "vlm":
            return self
        if self.data.format == "image_text":
            raise rule("data.format", f"image_text rows are images + text, for task vlm (this is task {self.task}); "
                       "set task=vlm or another data.format")
        for path, value, default in (("model.vision", self.model.vision, "frozen"),
                                     ("data.max_images", self.data.max_images, None),
                                     ("data.max_pixels", self.data.max_pixels, None),
                                     ("data.min_pixels", self.data.min_pixels, None),
                                     ("data.validation.exact_match",
                                      self.data.validation is not None and self.data.validation.exact_match, False)):
            if value != default:
                raise rule(path, f"applies to task vlm only (this is task {self.task}); remove it or set task=vlm")
        return self

    @model_validator(mode="after")
    def _qlora_keeps_vision_frozen(self) -> TrainConfig:
        # bitsandbytes + peft freeze the whole 4-bit base before the adapters go on; a trainable vision tower
        # would silently stay frozen.
        if self.peft.method == "qlora" and self.model.vision != "frozen":
            raise rule("model.vision", "qlora trains LoRA adapters on a frozen 4-bit base; use peft.method=lora to "
                       "train the vision side too, or model.vision=frozen")
        return self

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> TrainConfig:
        steps = self.schedule.max_steps
        if steps is not None and self.lr_schedule.warmup_steps > steps:
            raise rule("lr_schedule.warmup_steps", f"{self.lr_schedule.warmup_steps} is more than schedule.max_steps {steps}")
        return self

    def to_plan(self, world_size: int = 1) -> Plan:
        """The estimator's view of this run on `world_size` data-parallel ranks."""
        return Plan(
            mode="train",
            method=self.peft.plan_method,
            lora_rank=self.peft.rank,
            lora_targets=self.peft.target_modules,
            precision=self.distributed.mixed_precision,
            optimizer=self.optimizer.name,
            seq_len=self.data.max_seq_len,
            micro_batch=self.schedule.micro_batch_size,
            grad_accum=self.schedule.accumulation_steps(world_size),
            # VLM samples have data.max_images images at most (one when unlimited: the advisor's plan), resized
            # within the processor's pixel bounds.
            images=(self.data.max_images or 1) if self.task == "vlm" else 0,
            **({"min_pixels": self.data.min_pixels, "max_pixels": self.data.max_pixels} if self.task == "vlm" else {}),
            # The longest clip a speech run keeps (Wav2Vec2's activations grow with it; Whisper always sees 30 s).
            **({"audio_seconds": self.data.max_seconds} if self.task == "asr" and self.data.max_seconds else {}),
            grad_ckpt=self.distributed.activation_checkpointing,
            chunked_loss=self.distributed.chunked_loss,
            offload_activations=self.distributed.offload_activations,
            gpus=world_size,
            cpu_offload=self.distributed.cpu_offload,
            async_checkpoint=self.checkpoint.async_save,
        )

    def redacted_data(self) -> dict[str, object]:
        """The config as plain YAML data with secret interpolations put back as `${NAME}`."""
        data = self.model_dump(mode="json")
        for path, template in self._secret_templates.items():
            set_path(data, path, template)
        return data

    def __repr__(self) -> str:
        return f"TrainConfig({redact_text(json.dumps(self.redacted_data()), os.environ)})"

    __str__ = __repr__


def config_from_data(data: Mapping[str, object], overrides: Sequence[str] = (),
                     environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Validate YAML data + `a.b=v` overrides (after `${ENV}` interpolation) into a TrainConfig."""
    resolved, secret_templates = build_config_data(TrainConfig, data, overrides, os.environ if environ is None else environ)
    cfg = validate(TrainConfig, resolved)
    assert isinstance(cfg, TrainConfig)
    cfg._secret_templates = secret_templates
    return cfg


def read_yaml(path: str | Path) -> dict[str, object]:
    """The raw mapping in a config file (no interpolation, no validation)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {file}: {exc.strerror}", field="-c",
                        hint="pass an existing YAML file, e.g. examples/llm/tiny_offline.yaml") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UserError(f"{file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})", field="-c",
                        hint="save the config as UTF-8 (e.g. `iconv -f latin1 -t utf-8 OLD > NEW`)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # One line with the position (pyyaml's str() spans several, quoting "<unicode string>" as the file).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{file} is not valid YAML{where}: {problem}", field="-c",
                        hint="fix the YAML syntax there (indentation, a closing bracket or quote)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{file} must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}",
                        field="-c")
    return data


def load_config(path: str | Path, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Read a YAML file, apply overrides, validate. Bad files and fields raise UserError."""
    return config_from_data(read_yaml(path), overrides, environ)


def dump_yaml(cfg: TrainConfig) -> str:
    """YAML that `load_config` reads back to an equal config; secrets stay `${NAME}` and are scrubbed."""
    text = yaml.safe_dump(cfg.redacted_data(), sort_keys=False, allow_unicode=True)
    return redact_text(text, os.environ)
