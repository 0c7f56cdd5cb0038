"""The catalog's data model: what a model entry, a model family and a GPU entry must say.

The YAML files under catalog/data/ are validated against these pydantic models when the catalog loads,
so a typo in the data fails loudly, naming the file and the YAML path of the bad field. Torch-free.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Modality = Literal["llm", "vlm", "asr"]
UseCase = Literal[
    "chat",
    "code",
    "instruction",
    "summarization",
    "reasoning",
    "multilingual",
    "safety",
    "vqa",
    "captioning",
    "document",
    "transcription",
    "translation",
]
USE_CASES: tuple[str, ...] = UseCase.__args__  # type: ignore[attr-defined]

# Which use cases make sense for which modality: a speech model cannot be tagged for code, a text-only
# model cannot answer questions about images. `translation` is speech-to-English for ASR models.
_TEXT_USE_CASES = frozenset(
    {"chat", "code", "instruction", "summarization", "reasoning", "multilingual", "safety", "translation"}
)
USE_CASES_BY_MODALITY: dict[str, frozenset[str]] = {
    "llm": _TEXT_USE_CASES,
    "vlm": _TEXT_USE_CASES | {"vqa", "captioning", "document"},
    "asr": frozenset({"transcription", "translation", "multilingual"}),
}

ParamsMethod = Literal["meta-build", "analytic"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """One model checkpoint, with the facts needed to pick it, size it and fine-tune it."""

    name: str = Field(
        description="Short catalog name, lower case, e.g. 'llama-3.2-1b'.", pattern=r"^[a-z0-9][a-z0-9.\-]*$"
    )
    hf_id: str = Field(
        description="Hugging Face Hub repository id, e.g. 'meta-llama/Llama-3.2-1B'.",
        pattern=r"^[\w.\-]+/[\w.\-]+$",
    )
    family: str = Field(description="Name of the family this model belongs to (the family file's `name`).")
    modality: Modality = Field(description="llm (text), vlm (image+text) or asr (speech to text).")
    use_cases: tuple[UseCase, ...] = Field(
        min_length=1,
        description="What the vendor says the checkpoint is for (model card facts, not guesses).",
    )
    instruction_tuned: bool = Field(
        True,
        description="False for a pretrained base checkpoint (no instruction or chat tuning, per its model card); "
        "the advisor ranks it below an instruction-tuned model for chat and other instruction use.",
    )
    params: int = Field(gt=0, description="Exact parameter count, shared tensors counted once.")
    active_params: int | None = Field(
        default=None,
        gt=0,
        description="Parameters used per token for mixture-of-experts models; None if dense.",
    )
    params_method: ParamsMethod = Field(
        description="How `params` was obtained: 'meta-build' (transformers model built on the meta device) "
        "or 'analytic' (counted from the config by formula, for remote-code architectures)."
    )
    context_length: int | None = Field(
        gt=0,
        description="Token context window of the published checkpoint as configured (decoder target length for "
        "Whisper); None for CTC speech encoders, which have no token limit. Vendor extensions such as YaRN "
        "are mentioned in `notes`.",
    )
    license: str = Field(description="License id as on the Hub card, with its full name.")
    commercial_use: bool = Field(
        description="Whether the license allows commercial use (conditions in `notes`)."
    )
    gated: bool = Field(
        description="Whether the Hub repo requires accepting terms (and an HF_TOKEN) to download."
    )
    released: str = Field(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
        description="Month the vendor published this checkpoint on the Hugging Face Hub, 'YYYY-MM' (from the "
        "vendor's announcement or model card, cited in `source`); the advisor's recency term reads it.",
    )
    lora_targets: tuple[str, ...] = Field(
        min_length=1, description="Linear-module names LoRA wraps by default (the architecture's own names)."
    )
    config: dict[str, Any] = Field(
        description="The published config.json, with the fields it leaves to transformers' defaults filled in "
        "(listed in `derived_keys`), so every consumer sees the real dimensions."
    )
    derived_keys: tuple[str, ...] = Field(
        default=(),
        description="Dotted config keys filled from transformers' defaults, absent from the published file.",
    )
    source: tuple[str, ...] = Field(
        min_length=1, description="Where each fact was found (URLs, model cards, files)."
    )
    notes: str = Field(
        default="", description="Caveats: license conditions, context extensions, count method."
    )

    @field_validator("config")
    @classmethod
    def _config_has_model_type(cls, config: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(config.get("model_type"), str):
            raise ValueError(
                "config must contain a string `model_type` (copy it from the published config.json)"
            )
        return config

    @field_validator("released")
    @classmethod
    def _released_not_in_future(cls, released: str) -> str:
        today = datetime.date.today()
        if released > f"{today.year:04d}-{today.month:02d}":
            raise ValueError(f"released {released} is in the future (today is {today.isoformat()})")
        return released

    @model_validator(mode="after")
    def _use_cases_fit_modality(self) -> ModelSpec:
        allowed = USE_CASES_BY_MODALITY[self.modality]
        wrong = [u for u in self.use_cases if u not in allowed]
        if wrong:
            raise ValueError(
                f"use_cases {wrong} do not apply to modality {self.modality!r}; allowed: {sorted(allowed)}"
            )
        return self

    @model_validator(mode="after")
    def _active_below_total(self) -> ModelSpec:
        if self.active_params is not None and self.active_params >= self.params:
            raise ValueError(
                f"active_params ({self.active_params}) must be below params ({self.params}) for an MoE model"
            )
        return self

    @property
    def released_month(self) -> int:
        """`released` as a month count (year * 12 + month - 1), for differences in months."""
        year, month = self.released.split("-")
        return int(year) * 12 + int(month) - 1

    @property
    def display_params(self) -> str:
        return format_params(self.params)


class FamilySpec(_Frozen):
    """A model family: one vendor, one architecture line, several sizes."""

    name: str = Field(description="Family id, e.g. 'llama-3.2'; each model's `family` must equal it.")
    title: str = Field(description="Human name, e.g. 'LLaMA 3.2'.")
    vendor: str = Field(description="Who trains and publishes the family.")
    modality: Modality = Field(description="Modality shared by every model in the family.")
    best_for: str = Field(description="One or two sentences: what the family is the right pick for.")
    strengths: tuple[UseCase, ...] = Field(
        min_length=1, description="Use cases the family is notably good at, per its vendor's reports."
    )
    models: tuple[ModelSpec, ...] = Field(
        min_length=1, description="Every checkpoint of the family in the catalog."
    )

    @model_validator(mode="after")
    def _models_belong(self) -> FamilySpec:
        for i, model in enumerate(self.models):
            if model.family != self.name:
                raise ValueError(
                    f"models[{i}] ({model.name}) says family {model.family!r}, expected {self.name!r}"
                )
            if model.modality != self.modality:
                raise ValueError(
                    f"models[{i}] ({model.name}) has modality {model.modality!r}, family has {self.modality!r}"
                )
        return self


class GPUSpec(_Frozen):
    """One accelerator people fine-tune on.

    `memory_gib` is the total memory the framework reports on that card (`torch.cuda.get_device_properties
    (i).total_memory`, the same figure as cudaMemGetInfo's total), in GiB: a little less than the marketed
    size because the driver keeps some for itself (an "80GB" H100 reports ~79.2 GiB). Fit decisions are made
    against that figure, not the marketing number, which is kept in `marketed_gb`.
    """

    name: str = Field(description="Canonical name, e.g. 'H100-SXM'.")
    aliases: tuple[str, ...] = Field(
        default=(), description="Other spellings accepted by --gpu, e.g. 'h100'."
    )
    vendor: Literal["nvidia", "amd"] = Field(description="GPU vendor.")
    marketed_gb: int = Field(gt=0, description="Memory size as sold (the '80' in 'H100 80GB').")
    memory_gib: float = Field(
        gt=0, description="Total memory as torch reports it, in GiB (see class docstring)."
    )
    bf16: bool = Field(description="Whether the card runs bfloat16 natively (Ampere and later; not T4/V100).")
    bf16_tflops: float | None = Field(
        gt=0, description="Dense bf16 tensor throughput in TFLOP/s (no sparsity); None without bf16."
    )
    fp16_tflops: float = Field(gt=0, description="Dense fp16 tensor throughput in TFLOP/s (no sparsity).")
    bandwidth_gbs: float = Field(gt=0, description="Memory bandwidth in GB/s.")
    source: tuple[str, ...] = Field(min_length=1, description="Datasheets and reports the figures come from.")

    @model_validator(mode="after")
    def _bf16_consistent(self) -> GPUSpec:
        if self.bf16 != (self.bf16_tflops is not None):
            raise ValueError("bf16_tflops must be given exactly when bf16 is true")
        return self

    @model_validator(mode="after")
    def _reported_below_marketed(self) -> GPUSpec:
        # Reported totals sit a few percent under the marketed size; anything outside is a typo.
        if not 0.85 * self.marketed_gb <= self.memory_gib <= self.marketed_gb:
            raise ValueError(f"memory_gib {self.memory_gib} is implausible for a {self.marketed_gb} GB card")
        return self

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


class GPUTable(_Frozen):
    """The gpus.yaml file."""

    gpus: tuple[GPUSpec, ...] = Field(min_length=1, description="Every GPU in the table.")


def format_params(n: int) -> str:
    """1235814400 -> '1.24B', 94396320 -> '94.4M'."""
    if n >= 10**9:
        return f"{n / 1e9:.2f}B" if n < 10**11 else f"{n / 1e9:.0f}B"
    return f"{n / 1e6:.1f}M"
