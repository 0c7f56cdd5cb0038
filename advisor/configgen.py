"""From a `Recommendation` to the trainer's `TrainConfig`, written as YAML the trainer launches as is.

The config says exactly what the recommendation was estimated with (method, LoRA rank, precision,
sequence length, micro batch, gradient checkpointing), so `TrainConfig.to_plan(world_size)` gives the
recommendation's `Plan` back. The dataset is a clearly marked placeholder unless the user names one.
"""

from __future__ import annotations

from pathlib import Path

from automodel.advisor.explain import gib
from automodel.advisor.rank import Recommendation
from automodel.advisor.render import launch_command
from automodel.catalog.errors import UserError
from automodel.catalog.memory.plan import Plan
from automodel.trainer.config import TrainConfig, config_from_data, dump_yaml
from automodel.trainer.config_data import PLACEHOLDER_DATASET  # chat format: no column mapping needed

LORA_LR, FULL_LR = 2e-4, 2e-5
PEFT_NAME = {"full": "none", "lora": "lora", "qlora": "qlora"}  # the plan's method -> the trainer's peft.method


def global_batch(plan: Plan) -> int:
    """Sequences per optimizer step: micro x ranks x the accumulation the plan was estimated with."""
    return plan.micro_batch * plan.gpus * plan.grad_accum


def _peft_method(method: str, gpus: int) -> str:
    """The trainer's name for the recommended method. `rank` plans QLoRA on one GPU only, so the
    world-size check refuses only a hand-edited plan; it stays so no config says what the trainer refuses."""
    from automodel.trainer.config import PeftConfig

    try:
        PeftConfig(method=PEFT_NAME[method]).check_world_size(gpus)  # type: ignore[arg-type]
    except UserError as err:
        raise UserError(f"the trainer cannot run this pick: {err.message}", field="--write-config",
                        hint="force --gpus 1 or --method lora") from None
    return PEFT_NAME[method]


def check_dataset(dataset: str | None, rec: Recommendation) -> None:
    """A local data file the user named exists and its first rows have the columns the written config reads
    (a UserError naming the column and row otherwise); a Hub dataset is not opened here."""
    from automodel.trainer.config import DataConfig

    if dataset:
        DataConfig.model_validate(_data_section(rec.model.modality, dataset, rec.plan)).check_columns()


def build_config(rec: Recommendation, *, dataset: str | None = None, output_dir: str | None = None) -> TrainConfig:
    """The training config for one recommendation, validated by the trainer's own schema."""
    plan = rec.plan
    name = rec.model.name
    peft_method = _peft_method(plan.method, plan.gpus)
    data: dict[str, object] = {
        "task": rec.model.modality,
        "model": {"name": name},
        "peft": {
            "method": peft_method,
            "rank": plan.lora_rank,
            "alpha": 2.0 * plan.lora_rank,
            "target_modules": plan.lora_targets if isinstance(plan.lora_targets, str) else list(plan.lora_targets),
        },
        "distributed": {
            "activation_checkpointing": plan.grad_ckpt,
            "mixed_precision": plan.precision,
        },
        "data": _data_section(rec.model.modality, dataset, plan),
        "schedule": {
            "global_batch_size": global_batch(plan),
            "micro_batch_size": plan.micro_batch,
            "epochs": 1,
        },
        "optimizer": {"lr": FULL_LR if plan.method == "full" else LORA_LR},
        "checkpoint": {"export": "merged" if plan.method == "full" else "adapter"},
        "output_dir": output_dir or f"outputs/{name}",
    }
    return config_from_data(data)


def _data_section(modality: str, dataset: str | None, plan: Plan) -> dict[str, object]:
    """Chat rows for text and vision, audio rows for speech (the trainer's default columns in each)."""
    data: dict[str, object] = {"source": dataset or PLACEHOLDER_DATASET, "format": "chat", "max_seq_len": plan.seq_len}
    if modality == "asr":
        # `audio` and `text` columns (data.audio maps other names); language left to the user's data. Clips
        # longer than the estimate assumed are dropped, so the run stays within the estimated memory.
        data.update({"format": "audio", "max_seconds": plan.audio_seconds})
    if modality == "vlm":
        # Chat rows with image items; samples hold at most the images, and images the pixels, that the
        # estimate assumed (the processor's own bounds when the plan leaves them unset).
        data.update({"max_images": plan.images or None, "min_pixels": plan.min_pixels, "max_pixels": plan.max_pixels})
    return data


def header(rec: Recommendation, dataset: str | None) -> str:
    """YAML comments on top of the file: where it came from and what to fill in."""
    plan = rec.plan
    lines = [
        f"# Written by `automodel recommend` for {rec.model.hf_id} ({rec.model.display_params} params).",
        f"# Estimated peak {gib(rec.estimate.peak_reserved)} GiB reserved per GPU of "
        f"{gib(rec.gpu_mem_bytes)} GiB, on {plan.gpus} GPU(s) ({rec.gpus_per_node} per node x {rec.nodes} node(s)).",
    ]
    if dataset is None and rec.model.modality == "asr":
        lines += [
            f"# >>> FILL IN data.source: `{PLACEHOLDER_DATASET}` is a placeholder. Give your own .jsonl/.csv/.parquet",
            "# >>> file with `audio` (a clip path relative to the file) and `text` columns, or an HF dataset with an",
            "# >>> Audio column (other names: data.audio.audio_column / text_column). Whisper: set data.language.",
            f"# Launch: {launch_command(rec, '<this file>')}",
        ]
    elif dataset is None:
        lines += [
            f"# >>> FILL IN data.source: `{PLACEHOLDER_DATASET}` is a placeholder. Give your own .jsonl file with a",
            *(["# >>> `messages` column whose user turns hold image items ({type: image, image: path relative to",
                "# >>> the file}, {type: text, text: ...}), or an HF dataset name; or set data.format=image_text",
                "# >>> with data.image_text columns (image_column, prompt_template, answer_column). See docs/training.md."]
              if rec.model.modality == "vlm" else
              ["# >>> `messages` column ([{role, content}, ...]) or an HF dataset name, and adjust data.format."]),
            f"# Launch: {launch_command(rec, '<this file>')}",
        ]
    return "\n".join(lines) + "\n"


def check_writable(path: str | Path, *, force: bool, field: str = "--write-config") -> Path:
    """Refuse to replace an existing file (a config someone edited by hand) unless `force`."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a directory", field=field, hint="give a file path, e.g. ./my-run.yaml")
    if target.exists() and not force:
        raise UserError(f"{target} already exists; it is not overwritten", field=field,
                        hint="give another path, or add --force to replace it")
    return target


def write_config(rec: Recommendation, path: str | Path, *, dataset: str | None = None, force: bool = False) -> Path:
    """Write the recommendation's config to `path` (parents created) and return the path. An existing
    file is replaced only with `force` (a UserError naming the file and --force otherwise)."""
    cfg = build_config(rec, dataset=dataset)  # validates before anything is written
    target = check_writable(path, force=force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(header(rec, dataset) + dump_yaml(cfg))
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}", field="--write-config",
                        hint="give a writable path, e.g. ./my-run.yaml") from None
    return target
