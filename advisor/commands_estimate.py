"""`automodel estimate MODEL`: per-GPU memory of a training step or a generate call, and what fits.

Thin: argparse in, `Plan` built from the flags (pydantic validates), `estimate()` / `max_fit()` from
catalog/memory, then a rich table in GiB with the assumptions, or one JSON document (`--json`).
Torch-free unless `--simulate` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from automodel.catalog.errors import UserError, int_in
from automodel.catalog.memory.headroom import HEADROOM, HEADROOM_RULE, headroom_limit
from automodel.catalog.memory.plan import TERMS, MemoryEstimate, Plan, format_image_size, term_label
from automodel.catalog.units import GIB, parse_memory

_FLAG_FOR_FIELD = {
    "mode": "--mode", "method": "--method", "lora_rank": "--lora-rank", "lora_targets": "--lora-targets",
    "precision": "--precision", "optimizer": "--optimizer", "seq_len": "--seq-len",
    "micro_batch": "--batch-size", "grad_ckpt": "--grad-ckpt", "gpus": "--gpus", "new_tokens": "--new-tokens",
    "grad_accum": "--grad-accum", "images": "--images", "image_size": "--image-size", "min_pixels": "--min-pixels",
    "max_pixels": "--max-pixels", "audio_seconds": "--audio-seconds", "chunked_loss": "--chunked-loss",
    "offload_activations": "--offload-activations",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "estimate",
        help="per-GPU memory of fine-tuning or inference; --fit finds what fits a budget",
        description="Estimate per-GPU memory (weights, gradients, optimizer, activations, logits, KV cache, "
        "FSDP2 buffers, overhead) of a training step or a generate call.",
    )
    p.add_argument("model", metavar="MODEL", help="catalog name, Hub id, or path to a config.json / model dir")
    p.add_argument("--mode", choices=("train", "inference"), default=None, help="default: train")
    p.add_argument("--method", choices=("full", "lora", "qlora"), default=None, help="default: lora")
    p.add_argument("--lora-rank", type=int_in(1), default=None, metavar="N")
    p.add_argument("--lora-targets", default=None, metavar="all-linear|a,b,c")
    p.add_argument("--precision", choices=("bf16-mixed", "bf16", "fp32"), default=None)
    p.add_argument("--optimizer", choices=("adamw", "adamw-8bit", "sgd"), default=None)
    p.add_argument("--seq-len", type=int_in(1), default=None, metavar="N")
    p.add_argument("--batch-size", type=int_in(1), default=None, metavar="N",
                   help="micro batch per GPU")
    p.add_argument("--grad-accum", type=int_in(1), default=None, metavar="N",
                   help="micro batches per optimizer step (default 1): earlier gradients stay live")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing per block (default: on)")
    p.add_argument("--chunked-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="the engine's chunked linear + cross-entropy, never the full logits (default: on)")
    p.add_argument("--offload-activations", action=argparse.BooleanOptionalAction, default=None,
                   help="saved activations wait in host memory until backward (default: off)")
    p.add_argument("--gpus", type=int_in(1), default=None, metavar="N",
                   help="training: FSDP2 ranks; inference: GPUs the model is placed over as device_map='auto' "
                   "does (accelerate's infer_auto_device_map; imports torch), reporting the busiest GPU")
    p.add_argument("--new-tokens", type=int_in(0), default=None, metavar="N",
                   help="inference: tokens generated after the prompt")
    p.add_argument("--images", type=int_in(0), default=None, metavar="N",
                   help="VLM only: images per sequence (default 0)")
    p.add_argument("--image-size", default=None, metavar="WxH",
                   help="VLM only: each image's width x height in pixels before the processor resizes it "
                   "(default 448x448)")
    p.add_argument("--min-pixels", type=int_in(1), default=None, metavar="N",
                   help="Qwen2-VL/2.5-VL only: the processor's min_pixels (default: published 3136)")
    p.add_argument("--max-pixels", type=int_in(1), default=None, metavar="N",
                   help="Qwen2-VL/2.5-VL only: the processor's max_pixels (default: published 12845056)")
    p.add_argument("--audio-seconds", type=float, default=None, metavar="S",
                   help="ASR only: seconds of audio per sample (default 30; Whisper always sees 30 s)")
    p.add_argument("--gpu-mem", default=None, metavar="GB",
                   help="memory of one GPU: 24, 24G, 24GB, 24GiB; a plan fits when its peak reserved is at most "
                   f"{HEADROOM * 100:.0f} %% of it (the rule `recommend` uses)")
    p.add_argument("--fit", action="store_true",
                   help="largest batch and longest sequence that fit --gpu-mem under that rule (searched analytically)")
    p.add_argument("--simulate", action="store_true", help="simulate on fake tensors (imports torch)")
    p.add_argument("--compare", choices=("accelerate",), default=None,
                   help="also print `accelerate estimate-memory`'s figure for the model (its library API on the "
                   "meta model, offline; imports torch) and why ours differs")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run)


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The flags a user gave, over the Plan's defaults (which live only in Plan)."""
    # every Plan field a flag sets, read from the flag's argparse attribute (--batch-size -> batch_size)
    given = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in _FLAG_FOR_FIELD.items()}
    try:
        return Plan(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = str(problem["loc"][0]) if problem["loc"] else _pixel_field(problem["msg"])
        message = problem["msg"].removeprefix("Value error, ")  # a validator's own words, without pydantic's tag
        raise UserError(message, field=_FLAG_FOR_FIELD.get(name, name), hint="see `automodel estimate --help`") from None


def _pixel_field(message: str) -> str:
    """Plan's cross-field rule (min_pixels above max_pixels) has no location: name the flag it is about."""
    return "min_pixels" if "min_pixels" in message else ""


def check_flags(args: argparse.Namespace, plan: Plan, config: dict[str, Any], context: int | None) -> list[str]:
    """Flags that cannot apply to this plan or model raise (a silently ignored flag answers a different
    question than the one asked); flags that apply but go beyond the model come back as warnings."""
    from automodel.catalog.architecture import dims_from_config

    def reject(flag: str, why: str, hint: str) -> None:
        raise UserError(why, field=flag, hint=hint)

    if plan.method == "full":
        for flag, value in (("--lora-rank", args.lora_rank), ("--lora-targets", args.lora_targets)):
            if value is not None:
                reject(flag, "applies to --method lora or qlora; --method full trains every weight",
                       f"drop {flag}, or add --method lora")
    if plan.mode == "train" and args.new_tokens is not None:
        reject("--new-tokens", "applies to --mode inference only", "add --mode inference, or drop --new-tokens")
    if plan.mode == "inference":
        for flag, value in (("--grad-accum", args.grad_accum), ("--grad-ckpt", args.grad_ckpt),
                            ("--optimizer", args.optimizer), ("--chunked-loss", args.chunked_loss),
                            ("--offload-activations", args.offload_activations)):
            if value is not None:
                reject(flag, "applies to training only", f"drop {flag}, or drop --mode inference")
    dims = dims_from_config(config)
    if dims.vision is None:
        for flag, value in (("--images", plan.images or None), ("--image-size", args.image_size),
                            ("--min-pixels", args.min_pixels), ("--max-pixels", args.max_pixels)):
            if value is not None:
                reject(flag, f"{args.model} has no vision tower ({flag} applies to VLMs only)", f"drop {flag}")
    else:
        if args.image_size is not None and not plan.images:
            reject("--image-size", "describes the images, but the plan has none", "add --images N (1 or more)")
        for flag, value in (("--min-pixels", args.min_pixels), ("--max-pixels", args.max_pixels)):
            if value is not None and dims.vision.fixed_image_size:
                reject(flag, f"{args.model}'s processor resizes every image to {dims.vision.fixed_image_size} px "
                       "square; pixel bounds do not apply", f"drop {flag}")
    if args.audio_seconds is not None and dims.audio is None:
        reject("--audio-seconds", f"{args.model} takes no audio (--audio-seconds applies to ASR models only)",
               "drop --audio-seconds")
    unknown = dims.unknown_targets(plan.lora_targets) if plan.method != "full" else ()
    if unknown:
        reject("--lora-targets", f"{', '.join(unknown)} matches no linear layer of {args.model} that LoRA adapts "
               "(the output head never is)",
               f"use all-linear or some of: {', '.join(sorted({lin.name for lin in dims.linears}))}")
    warnings = []
    tokens = plan.seq_len + (plan.new_tokens if plan.mode == "inference" else 0)
    whisper_default = config.get("model_type") == "whisper" and args.seq_len is None  # capped, not asked for
    if context and tokens > context and not whisper_default:
        what = "--seq-len + --new-tokens" if plan.mode == "inference" and plan.new_tokens else "--seq-len"
        counted = ("the estimate counts the decoder's maximum" if config.get("model_type") == "whisper"
                   else "the estimate is for that length, but the model was not trained on it")
        warnings.append(f"{what} = {tokens} tokens is beyond {args.model}'s context length of {context}; {counted}")
    return warnings


def run(args: argparse.Namespace) -> int:
    from automodel.catalog.memory.estimate import estimate, simulated
    from automodel.catalog.registry import resolve

    plan = plan_from_args(args)
    if args.fit and args.gpu_mem is None:
        raise UserError("--fit needs a per-GPU budget", field="--gpu-mem", hint="e.g. --fit --gpu-mem 24GB")
    budget = parse_memory(args.gpu_mem) if args.gpu_mem is not None else None
    limit = headroom_limit(budget) if budget is not None else None
    model = resolve(args.model)
    warnings = check_flags(args, plan, model.config, model.context_length)
    for line in warnings:  # stderr, so --json keeps stdout one document (which lists them too)
        print(f"warning: {line}", file=sys.stderr)
    spec_params = model.spec.params if model.spec is not None else None
    placement = None
    if plan.mode == "inference" and plan.gpus > 1:
        if args.simulate:
            raise UserError("the simulator runs one process; a device map spans several GPUs", field="--simulate",
                            hint="drop --simulate, or use --gpus 1")
        from automodel.catalog.memory.hf_accelerate import device_map_estimate  # torch + accelerate

        placement = device_map_estimate(model.config, plan, budget)
        result = placement.busiest.estimate
    else:
        result = simulated(model.config, plan) if args.simulate else estimate(model.config, plan, params=spec_params)
    compared = None
    if args.compare == "accelerate":
        from automodel.catalog.memory.hf_accelerate import (  # torch + accelerate
            accelerate_figures,
            differences,
        )

        figures = accelerate_figures(model.config, plan.precision)
        compared = (figures, differences(figures, result, plan))
    fit = None
    if args.fit and budget is not None:
        from automodel.catalog.memory.fit import max_fit

        # The search probes dozens of plans: always analytic (milliseconds each), also under --simulate.
        fit = max_fit(model.config, plan, budget)
    if args.json:
        doc: dict[str, object] = {"model": model.name, "plan": plan.model_dump(mode="json"), **result.to_json(),
                                  **sample_shape(model.config, plan), "warnings": warnings}
        if budget is not None and limit is not None:
            doc["budget_bytes"] = budget
            doc["limit_bytes"] = limit
            doc["fits"] = result.peak_reserved <= limit
            doc["headroom_rule"] = HEADROOM_RULE
        if fit is not None:
            doc["fit"] = fit.to_json()
        if placement is not None:
            doc["device_map"] = placement.to_json()
        if compared is not None:
            doc["accelerate"] = {**compared[0].to_json(), "why_ours_differs": compared[1]}
        print(json.dumps(doc, indent=2))
        return 0
    _render(model.name, plan, result, budget, fit, sample_shape(model.config, plan))
    if placement is not None:
        _render_placement(placement)
    if compared is not None:
        _render_compare(*compared)
    return 0


def _render_placement(placement: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="device_map='auto' (accelerate infer_auto_device_map): per GPU", title_justify="left")
    for name, justify in (("GPU", "right"), ("blocks", "right"), ("weights GiB", "right"), ("peak reserved GiB", "right"),
                          ("holds", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for share in placement.shares:
        held = ", ".join(n for n in share.modules if "layers." not in n) or "-"
        mark = " (busiest)" if share is placement.busiest else ""
        table.add_row(f"{share.gpu}{mark}", str(share.blocks), f"{share.weight_bytes / GIB:.2f}",
                      f"{share.estimate.peak_reserved / GIB:.2f}", held)
    Console().print(table, highlight=False)


def _render_compare(figures: Any, why: list[str]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"accelerate estimate-memory ({figures.precision}, its library API on the meta model): total size "
                  f"{figures.total_bytes / GIB:.2f} GiB, largest layer {figures.largest_layer_bytes / GIB:.2f} GiB "
                  f"({', '.join(figures.largest_layer)}), training using Adam {figures.training_bytes / GIB:.2f} GiB")
    console.print("why ours differs:")
    for line in why:
        console.print(f"  - {line}")


def sample_shape(config: dict[str, Any], plan: Plan) -> dict[str, int | None]:
    """What one sample becomes in the model: image tokens and patches per image (VLMs), encoder frames
    per clip (speech models); None where the model takes no such input."""
    from automodel.catalog.architecture import dims_from_config
    from automodel.catalog.memory.inputs import image_grid

    dims = dims_from_config(config)
    grid = image_grid(dims, plan)
    return {
        "image_tokens_per_image": grid.tokens if grid else None,
        "image_patches_per_image": grid.patches if grid else None,
        "audio_frames": dims.audio.frames(plan.audio_seconds) if dims.audio else None,
    }


def estimate_title(name: str, plan: Plan, engine: str) -> str:
    """One line: the model and everything the figure depends on, checkpointing included."""
    ckpt = ", grad ckpt on" if plan.grad_ckpt else ", grad ckpt off" if plan.mode == "train" else ""
    return (f"{name}: {plan.mode}, {plan.method}" + (f" r={plan.lora_rank}" if plan.method != "full" else "")
            + f", {plan.precision}, seq {plan.seq_len} x batch {plan.micro_batch}{ckpt}, "
            f"{plan.gpus} GPU{'s' if plan.gpus > 1 else ''} ({engine})")


def estimate_table(est: MemoryEstimate) -> Any:
    """The per-GPU terms (zero ones left out), then the peaks."""
    from rich.table import Table

    table = Table(highlight=False)
    table.add_column("term", no_wrap=True)
    table.add_column("GiB / GPU", justify="right", no_wrap=True)
    for term in TERMS:
        value = getattr(est, term)
        if value:
            table.add_row(term_label(term), f"{value / GIB:.2f}")
    table.add_section()
    table.add_row("peak allocated", f"{est.peak_allocated / GIB:.2f}")
    table.add_row("[bold]peak reserved (device)[/bold]", f"[bold]{est.peak_reserved / GIB:.2f}[/bold]")
    if est.host_peak:
        table.add_section()
        table.add_row("host RAM / process (peak)", f"{est.host_peak / GIB:.2f}")
    return table


def _render(name: str, plan: Plan, est: MemoryEstimate, budget: int | None, fit: Any,
            shape: dict[str, int | None]) -> None:
    from rich.console import Console

    console = Console()
    # printed as a line of its own (a table title wraps to the table's width); no number highlighting
    # inside model names such as llama-3.1-8b
    console.print(estimate_title(name, plan, est.engine), highlight=False, markup=False)
    console.print(estimate_table(est))
    console.print(f"params {est.params:,}  trainable {est.trainable_params:,}")
    if shape["image_tokens_per_image"] is not None:
        console.print(f"images {plan.images} x {format_image_size(plan.image_size)}: "
                      f"{shape['image_tokens_per_image']} tokens each ({shape['image_patches_per_image']} vision "
                      "patches)", highlight=False)
    if shape["audio_frames"] is not None:
        console.print(f"audio {plan.audio_seconds:g} s: {shape['audio_frames']} encoder frames", highlight=False)
    if budget is not None:
        limit = headroom_limit(budget)
        verdict = "fits" if est.peak_reserved <= limit else "does NOT fit"
        console.print(f"{verdict} a {budget / GIB:.1f} GiB GPU: peak reserved {est.peak_reserved / GIB:.2f} GiB "
                      f"against the limit of {limit / GIB:.2f} GiB ({HEADROOM_RULE}; `recommend` uses the same rule)",
                      highlight=False)
    if fit is not None:
        console.print(f"max micro batch at seq {plan.seq_len}: {fit.max_micro_batch or 'none (even 1 does not fit)'}")
        console.print(f"max seq len at batch {plan.micro_batch}: {fit.max_seq_len or 'none (even 1 does not fit)'}")
    console.print("assumptions:")
    for line in est.assumptions:
        console.print(f"  - {line}", highlight=False)
