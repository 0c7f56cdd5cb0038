"""The two types every memory question is asked and answered in.

`Plan` describes one run (training step or inference) the way the engine in this repo would execute it;
`MemoryEstimate` is the frozen per-GPU answer, in bytes. The analytic engine, the simulator, the advisor,
`automodel estimate`, the trainer's dry-run and the trainer's measured peak all speak these two types,
so their numbers can be laid side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

Mode = Literal["train", "inference"]
Method = Literal["full", "lora", "qlora"]
Precision = Literal["bf16-mixed", "bf16", "fp32"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd"]


class Plan(BaseModel):
    """One run, as the estimator sees it. Defaults live here and nowhere else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("train", description="`train` (one optimizer step) or `inference` (prefill + generate).")
    method: Method = Field(
        "lora",
        description="full: every weight trains; lora: frozen base + LoRA adapters; qlora: NF4-quantised frozen base + LoRA.",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank r (adapter A is r x in, B is out x r).")
    lora_targets: tuple[str, ...] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names LoRA wraps, or `all-linear` (every nn.Linear of the language model except the output head).",
    )
    precision: Precision = Field(
        "bf16-mixed",
        description="bf16-mixed: fp32 master weights, bf16 compute (FSDP2 MixedPrecisionPolicy); bf16: everything bf16; fp32: everything fp32.",
    )
    optimizer: Optimizer = Field("adamw", description="adamw: two fp32 states; adamw-8bit: two 8-bit states; sgd: no state.")
    seq_len: int = Field(2048, ge=1, description="Tokens per sequence (prompt tokens for inference).")
    micro_batch: int = Field(1, ge=1, description="Sequences per GPU per forward/backward.")
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro batches accumulated per optimizer step; above 1 gradients outlive a micro batch "
        "(with FSDP2 as shards: the trainer reduce-scatters every micro batch).",
    )
    grad_ckpt: bool = Field(True, description="Activation checkpointing per decoder block.")
    offload_activations: bool = Field(
        False, description="The tensors autograd saves in the forward (with grad_ckpt: each block's input) wait for "
        "backward in host memory (trainer/offload.py).",
    )
    chunked_loss: bool = Field(
        True, description="The engine's chunked linear + cross-entropy (never the full logits); false: the plain "
        "head and cross-entropy over every position's logits.",
    )
    gpus: int = Field(1, ge=1, description="Data-parallel ranks; with more than one, FSDP2 shards weights, grads and optimizer state.")
    cpu_offload: bool = Field(False, description="FSDP2 CPUOffloadPolicy: sharded params, grads and optimizer state live in host memory.")
    async_checkpoint: bool = Field(
        False, description="Checkpoints written in the background (checkpoint.async_save): each rank holds a host "
        "copy of its trainable weights and optimizer state while one is written. Host memory only.",
    )
    new_tokens: int = Field(0, ge=0, description="Inference only: tokens generated after the prompt (KV cache grows to seq_len + new_tokens).")
    images: int = Field(0, ge=0, description="VLM only: images per sequence.")
    image_size: tuple[int, int] = Field(
        (448, 448),
        description="VLM only: width x height in pixels of each image before the processor resizes it "
        "(`WxH`, e.g. 448x448; one number is a square). Qwen2-VL/2.5-VL resize it to multiples of 28 within "
        "min_pixels..max_pixels; Gemma 3 always uses 896x896.",
    )
    min_pixels: int | None = Field(
        None, ge=1, description="VLM only (Qwen2-VL/2.5-VL): the processor's lower pixel bound; None: the published "
        "preprocessor_config's 3136.")
    max_pixels: int | None = Field(
        None, ge=1, description="VLM only (Qwen2-VL/2.5-VL): the processor's upper pixel bound; None: the published "
        "preprocessor_config's 12845056.")
    audio_seconds: float = Field(
        30.0, gt=0, description="ASR only: seconds of audio per sample. Whisper's encoder sees 30 s whatever the "
        "clip; wav2vec2's frames grow with it (~50 per second).")

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, value: object) -> object:
        return image_size_from(value)

    @field_serializer("image_size")
    def _image_size_text(self, value: tuple[int, int]) -> str:
        return format_image_size(value)

    @model_validator(mode="after")
    def _pixel_bounds(self) -> Plan:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        return self

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _targets_from_csv(cls, value: object) -> object:
        return lora_targets_from(value)


# Qwen2-VL's smart_resize refuses images more than 200 times wider than tall (or taller than wide).
MAX_ASPECT = 200


def image_size_from(value: object) -> tuple[int, int]:
    """`448x448` (a flag or YAML), `448` (a square), or [448, 448] -> (width, height); else a ValueError
    that says what is expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected WIDTHxHEIGHT in pixels (e.g. 448x448), got {value!r}")
    if isinstance(value, int):
        parts: list[object] = [value, value]
    elif isinstance(value, str):
        text = value.strip().lower().replace("\u00d7", "x")
        parts = [p.strip() for p in text.split("x")] if "x" in text else [text, text]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise ValueError(f"expected WIDTHxHEIGHT in pixels (e.g. 448x448), got {value!r}")
    if len(parts) != 2:
        raise ValueError(f"expected WIDTHxHEIGHT in pixels (e.g. 448x448), got {value!r}")
    sides = []
    for part in parts:
        if isinstance(part, str) and part.isdigit():
            part = int(part)
        if not isinstance(part, int) or isinstance(part, bool) or part < 1:
            raise ValueError(f"expected WIDTHxHEIGHT as two positive whole numbers of pixels (e.g. 448x448), "
                             f"got {value!r}")
        sides.append(part)
    width, height = sides
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ValueError(f"{width}x{height} is more than {MAX_ASPECT}:1; image processors refuse such images")
    return width, height


def format_image_size(size: tuple[int, int]) -> str:
    """(width, height) -> `WxH`, the form the flag takes."""
    return f"{size[0]}x{size[1]}"


def lora_targets_from(value: object) -> object:
    """`q_proj,v_proj` from a flag or `[q_proj, v_proj]` from YAML -> a tuple of names (blanks dropped);
    `all-linear` as is. Empty is a ValueError: LoRA would adapt nothing. (Plan and the trainer's
    PeftConfig both read targets through this, so the flag and the YAML accept the same things.)"""
    if isinstance(value, str) and value != "all-linear":
        value = value.split(",")
    if isinstance(value, list | tuple):
        value = tuple(v.strip() if isinstance(v, str) else v for v in value if not (isinstance(v, str) and not v.strip()))
    if value is None or value == ():
        raise ValueError("give `all-linear` or a list of module names (e.g. q_proj,v_proj)")
    return value


# The terms of a breakdown, in the order they are rendered. Each one is a per-GPU byte count.
TERMS: tuple[str, ...] = (
    "weights",
    "adapter_weights",
    "gradients",
    "optimizer",
    "activations",
    "logits",
    "kv_cache",
    "comm_buffers",
    "overhead",
)


def term_label(term: str) -> str:
    """A term as people read it (`adapter_weights` -> `adapter weights`); JSON keeps the key."""
    return term.replace("_", " ")


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of one run, in bytes.

    peak_allocated is what `torch.cuda.max_memory_allocated()` would report (tensors only);
    peak_reserved is device level as nvidia-smi sees it: the caching allocator's reserve
    (fragmentation) plus the CUDA context and kernels (`overhead`).
    """

    engine: Literal["analytic", "simulate", "measured"]
    params: int
    trainable_params: int
    weights: int
    adapter_weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    kv_cache: int
    comm_buffers: int
    overhead: int
    peak_allocated: int
    peak_reserved: int
    assumptions: tuple[str, ...] = field(default_factory=tuple)
    # host (CPU) RAM per process: the peak, and its terms (catalog/memory/host.py); 0 / () when not estimated
    host_peak: int = 0
    host: tuple[tuple[str, int], ...] = ()

    def breakdown(self) -> dict[str, int]:
        """Term -> bytes, in render order."""
        return {term: getattr(self, term) for term in TERMS}

    def to_json(self) -> dict[str, object]:
        """The `--json` shape shared by estimate, recommend and the trainer's report."""
        data = asdict(self)
        return {
            "engine": self.engine,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "peak_allocated_bytes": self.peak_allocated,
            "peak_reserved_bytes": self.peak_reserved,
            "breakdown": self.breakdown(),
            "host_peak_bytes": self.host_peak,
            "host_breakdown": dict(self.host),
            "assumptions": list(data["assumptions"]),
        }
