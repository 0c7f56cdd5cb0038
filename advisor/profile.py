"""The decision model: what the user wants to fine-tune, on what, under which requirements and strategy.

Four steps, in the order the wizard asks them and `automodel recommend` takes them as flags:
task -> hardware -> requirements -> strategy. A `Profile` bundles the four; `rank.recommend(profile)`
is the only consumer. Everything here is torch-free and validated by pydantic (extra fields forbidden).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from automodel.catalog.schema import USE_CASES as CATALOG_USE_CASES
from automodel.catalog.schema import USE_CASES_BY_MODALITY as CATALOG_BY_MODALITY
from automodel.catalog.schema import Modality

Priority = Literal["balanced", "quality", "latency"]
MethodChoice = Literal["auto", "full", "lora", "qlora"]
Switch = Literal["auto", "on", "off"]
HardwareSource = Literal["flags", "nvidia-smi", "torch.cuda"]

# The use cases `--use-case` takes (the catalog's tags minus `safety`, which is the --safety filter),
# and the ones that make sense per modality (the catalog's own table): a VLM is not asked about transcription.
USE_CASES: tuple[str, ...] = tuple(u for u in CATALOG_USE_CASES if u != "safety")
UseCase = Literal[USE_CASES]  # type: ignore[valid-type]  # derived, so the two lists cannot drift
USE_CASES_BY_MODALITY: dict[str, tuple[str, ...]] = {
    modality: tuple(u for u in USE_CASES if u in allowed) for modality, allowed in CATALOG_BY_MODALITY.items()
}

# Sequence length used when the user gives none. ASR decoders (Whisper) take at most 448 text tokens.
DEFAULT_SEQ_LEN: dict[str, int] = {"llm": 2048, "vlm": 2048, "asr": 448}


class Task(BaseModel):
    """Step 1: what is being fine-tuned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: Modality = Field(description="llm (text), vlm (text + images) or asr (speech to text).")
    use_case: UseCase | None = Field(None, description="What the fine-tuned model is for; none means any.")
    models: tuple[str, ...] | None = Field(
        None, description="Catalog names of the only models to plan (`--model`, `--family`); none means every "
        "catalog model of the modality.",
    )

    @model_validator(mode="after")
    def _use_case_fits_modality(self) -> Task:
        if self.use_case is not None and self.use_case not in USE_CASES_BY_MODALITY[self.modality]:
            allowed = ", ".join(USE_CASES_BY_MODALITY[self.modality])
            raise ValueError(f"use_case: {self.use_case!r} is not a use case for {self.modality} (one of {allowed})")
        return self


class Hardware(BaseModel):
    """Step 2: the GPUs the run gets. Per-GPU memory is what every fit is checked against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str | None = Field(None, description="Catalog GPU name (e.g. `A100-80GB`), or none when only memory is known.")
    memory_bytes: int = Field(gt=0, description="Usable memory of one GPU, in bytes (as nvidia-smi reports the total).")
    gpus_per_node: int = Field(1, ge=1, description="GPUs per node the run may use.")
    nodes: int = Field(1, ge=1, description="Nodes the run may use.")
    bf16_tflops: float | None = Field(
        None, gt=0, description="Dense bf16 peak of one GPU in TFLOP/s (for time estimates); none when unknown."
    )
    source: HardwareSource = Field("flags", description="Where this came from: flags, nvidia-smi or torch.cuda.")

    @property
    def detected(self) -> bool:
        return self.source != "flags"

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30


class Requirements(BaseModel):
    """Step 3: what the user cares about and the shape of the training data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority = Field("balanced", description="quality favours bigger models, latency smaller ones.")
    multilingual: bool = Field(False, description="Only models the catalog marks as multilingual.")
    safety: bool = Field(False, description="Only models from families the catalog marks for safety-critical use.")
    commercial_only: bool = Field(False, description="Only licences that allow commercial use.")
    allow_gated: bool = Field(True, description="Allow models whose Hub repository requires accepting a licence.")
    seq_len: int | None = Field(
        None, ge=1, description="Tokens per training sequence; none means the modality's default (2048, ASR 448)."
    )
    batch: int = Field(1, ge=1, description="Micro batch: sequences per GPU per forward/backward.")
    global_batch: int | None = Field(
        None, ge=1, description="Sequences per optimizer step, exactly; none means at least 8, rounded up so "
        "that every GPU gets whole micro batches.",
    )

    @model_validator(mode="after")
    def _global_batch_splits_into_micro_batches(self) -> Requirements:
        if self.global_batch is not None and self.global_batch % self.batch:
            raise ValueError(f"global_batch: {self.global_batch} is not a multiple of the micro batch {self.batch}")
        return self
    dataset_tokens: int | None = Field(
        None, gt=0, description="Training tokens (dataset size x epochs) for a time estimate; none skips it."
    )


class StrategyPreference(BaseModel):
    """Step 4: how to train. `auto` everywhere lets the ranking pick the cheapest strategy that fits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: MethodChoice = Field("auto", description="auto, or force full fine-tuning, LoRA or QLoRA.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank for lora/qlora.")
    grad_ckpt: Switch = Field("auto", description="Activation checkpointing: auto (only when needed), on or off.")
    fsdp_degree: int | None = Field(
        None, ge=1, description="GPUs to shard over with FSDP2; none means all of them (fewer only when the "
        "global batch cannot be split that far, or for QLoRA, which runs in one process)."
    )


class Profile(BaseModel):
    """The four answers together: the whole input of `rank.recommend`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = Field(description="Step 1: modality and use case.")
    hardware: Hardware = Field(description="Step 2: GPUs.")
    requirements: Requirements = Field(default_factory=Requirements, description="Step 3: requirements.")
    strategy: StrategyPreference = Field(default_factory=StrategyPreference, description="Step 4: strategy.")

    @model_validator(mode="after")
    def _degree_within_hardware(self) -> Profile:
        degree = self.strategy.fsdp_degree
        if degree is not None and degree > self.hardware.total_gpus:
            raise ValueError(
                f"strategy.fsdp_degree: {degree} is more than the {self.hardware.total_gpus} GPU(s) available"
            )
        return self

    @property
    def seq_len(self) -> int:
        """The sequence length every estimate uses."""
        return self.requirements.seq_len or DEFAULT_SEQ_LEN[self.task.modality]
