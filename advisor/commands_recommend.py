"""`automodel recommend` (flags in, ranked models out) and `automodel advise` (the interactive wizard).

Thin on purpose: parse the flags into a `Profile`, call `rank.recommend`, render. Torch-free: detection
goes through nvidia-smi, and torch is only imported when nvidia-smi is missing and the user gave no
--gpu/--gpu-mem (so detection is the only way to answer).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, get_args

from pydantic import ValidationError

from automodel.advisor.profile import (
    USE_CASES,
    Hardware,
    MethodChoice,
    Priority,
    Profile,
    Requirements,
    StrategyPreference,
    Task,
)
from automodel.catalog.errors import UserError, int_in
from automodel.catalog.schema import Modality

if TYPE_CHECKING:
    from automodel.advisor.rank import Recommendation

FIELD_TO_FLAG = {
    "use_case": "--use-case",
    "seq_len": "--seq-len",
    "batch": "--batch-size",
    "fsdp_degree": "--gpus",
    "dataset_tokens": "--dataset-tokens",
    "global_batch": "--global-batch",
}
def parse_tokens(text: str) -> int:
    """`250M`, `1.5B`, `2000000` -> token count (argparse type)."""
    from automodel.catalog.units import parse_count

    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="rank the catalog's models for a task and hardware, with a strategy that fits",
        description="Rank models for a task on given (or detected) GPUs, or plan one model you already chose "
        "(--model, --family). Every pick fits the stated memory per the analytic estimator, with 10 %% headroom "
        "(peak reserved <= 90 %% of one GPU), and uses every GPU given (FSDP2) unless it says why not.",
    )
    p.add_argument("--task", choices=get_args(Modality), help="what to fine-tune (implied by --model/--family)")
    p.add_argument("--model", metavar="NAME", help="plan only this catalog model (name or Hub id)")
    p.add_argument("--family", metavar="F", help="plan only this catalog family's models (e.g. qwen2.5-vl)")
    p.add_argument("--use-case", choices=USE_CASES, metavar="USE_CASE", help="what the model is for: " + ", ".join(USE_CASES))
    p.add_argument("--gpu", metavar="NAME", help="GPU model from `automodel gpus` (e.g. A100-80GB, 4090)")
    p.add_argument("--gpu-mem", metavar="GB", help="memory per GPU: 24, 24G, 24GB or 24GiB (GiB)")
    p.add_argument("--gpus", type=int_in(1), metavar="N", help="GPUs per node (default 1, or detected)")
    p.add_argument("--nodes", type=int_in(1), metavar="N", help="nodes (default 1)")
    p.add_argument("--priority", choices=get_args(Priority), default=None, help="default balanced")
    p.add_argument("--multilingual", action="store_true", help="only multilingual models")
    p.add_argument("--safety", action="store_true", help="only models marked for safety-critical use")
    p.add_argument("--no-gated", action="store_true", help="skip models whose Hub repo is gated")
    p.add_argument("--commercial", action="store_true", help="only licences that allow commercial use")
    p.add_argument("--method", choices=get_args(MethodChoice), default=None, help="default auto")
    p.add_argument("--seq-len", type=int_in(1), metavar="N", help="tokens per sequence (default 2048; asr 448)")
    p.add_argument("--batch-size", type=int_in(1), metavar="N", help="micro batch per GPU (default 1)")
    p.add_argument("--global-batch", type=int_in(1), metavar="N",
                   help="sequences per optimizer step, exactly (default: at least 8, one micro batch per GPU or more)")
    p.add_argument("--dataset-tokens", type=parse_tokens, metavar="N", help="training tokens, for a time estimate")
    p.add_argument("--top", type=int_in(1), default=5, metavar="K", help="show the best K (default 5)")
    p.add_argument("--host-mem", metavar="GB", help="RAM per node, to warn about picks whose processes need more "
                   "host memory (default: this machine's, when its GPUs are the ones planned for)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--write-config", metavar="PATH", help="write the top pick's training config to PATH")
    p.add_argument("--force", action="store_true", help="let --write-config replace an existing file")
    p.set_defaults(func=run_recommend)

    a = subparsers.add_parser("advise", help="interactive advisor (the automodel-advisor wizard)")
    a.add_argument("--force", action="store_true", help="let the wizard replace an existing config file")
    a.set_defaults(func=run_advise)


def _flag_error(err: ValidationError) -> UserError:
    """pydantic's first complaint, named by the flag the user typed."""
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = [str(x) for x in first["loc"]]
    name = loc[-1] if loc else ""
    if not name and ": " in message:  # model validators name their field as the message's prefix
        name, message = message.split(": ", 1)
    name = name.rsplit(".", 1)[-1]
    return UserError(message, field=FIELD_TO_FLAG.get(name, "--" + name.replace("_", "-")),
                     hint="see `automodel recommend --help`")


def chosen_models(args: argparse.Namespace) -> tuple[str, tuple[str, ...] | None]:
    """The task and, with --model or --family, the catalog models to plan (the task follows from them)."""
    from automodel.catalog.registry import find_model, load_catalog

    if args.model and args.family:
        raise UserError("give --model or --family, not both", field="--model",
                        hint="drop --family to plan one model, or --model to plan the whole family")
    if args.model:
        try:
            spec = find_model(args.model)
        except UserError as err:
            raise UserError(err.message, field="--model", hint=err.hint) from None
        modality, names = spec.modality, (spec.name,)
    elif args.family:
        family = load_catalog().family(args.family)
        modality, names = family.modality, tuple(m.name for m in family.models)
    elif args.task is None:
        raise UserError("say what to fine-tune", field="--task",
                        hint="give --task llm|vlm|asr, or --model NAME / --family F to plan models you chose")
    else:
        return args.task, None
    if args.task is not None and args.task != modality:
        flag = "--model" if args.model else "--family"
        raise UserError(f"{getattr(args, flag[2:])} is a {modality} model, not {args.task}", field="--task",
                        hint=f"drop --task (it follows from {flag}) or give --task {modality}")
    return modality, names


def profile_from_args(args: argparse.Namespace, hardware: Hardware) -> Profile:
    """Flags -> Profile; only flags the user gave are passed, so the schema's defaults apply."""
    modality, models = chosen_models(args)
    req = {
        "priority": args.priority,
        "seq_len": args.seq_len,
        "batch": args.batch_size,
        "global_batch": args.global_batch,
        "dataset_tokens": args.dataset_tokens,
    }
    try:
        return Profile(
            task=Task(modality=modality, use_case=args.use_case, models=models),
            hardware=hardware,
            requirements=Requirements(
                multilingual=args.multilingual,
                safety=args.safety,
                commercial_only=args.commercial,
                allow_gated=not args.no_gated,
                **{k: v for k, v in req.items() if v is not None},
            ),
            strategy=StrategyPreference(**({"method": args.method} if args.method else {})),
        )
    except ValidationError as err:
        raise _flag_error(err) from None


def inputs_json(args: argparse.Namespace, profile: Profile) -> dict[str, object]:
    hw, req = profile.hardware, profile.requirements
    return {
        "task": profile.task.modality,
        "use_case": profile.task.use_case,
        "models": None if profile.task.models is None else list(profile.task.models),
        "gpu": hw.gpu,
        "gpu_mem_bytes": hw.memory_bytes,
        "gpus": hw.gpus_per_node,
        "nodes": hw.nodes,
        "hardware_source": hw.source,
        "priority": req.priority,
        "multilingual": req.multilingual,
        "safety": req.safety,
        "commercial": req.commercial_only,
        "no_gated": not req.allow_gated,
        "method": profile.strategy.method,
        "seq_len": profile.seq_len,
        "batch_size": req.batch,
        "global_batch": req.global_batch,
        "dataset_tokens": req.dataset_tokens,
        "top": args.top,
    }


def argv_from_args(args: argparse.Namespace) -> list[str]:
    """The `recommend` command line that reproduces these flags (for the next-step hint)."""
    argv = ["recommend"]
    for flag in ("task", "model", "family", "use_case", "gpu", "gpu_mem", "gpus", "nodes", "priority", "method",
                 "seq_len", "batch_size", "global_batch", "dataset_tokens"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    for flag in ("multilingual", "safety", "no_gated", "commercial"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    return argv


def run_recommend(args: argparse.Namespace) -> int:
    from automodel.advisor.hardware import resolve_hardware
    from automodel.advisor.rank import recommend

    if args.force and not args.write_config:
        raise UserError("applies to --write-config only", field="--force", hint="add --write-config PATH, or drop --force")
    if args.write_config:  # before any work: an existing file is not replaced without --force
        from automodel.advisor.configgen import check_writable

        check_writable(args.write_config, force=args.force)
    hardware = resolve_hardware(gpu=args.gpu, gpu_mem=args.gpu_mem, gpus=args.gpus, nodes=args.nodes)
    profile = profile_from_args(args, hardware)
    result = recommend(profile)
    # this machine's RAM says something about the plan only when its GPUs are the ones planned for
    _warn_host_ram(result.recommendations[: args.top], args.host_mem, detected=hardware.source != "flags")
    written = None
    if args.write_config and result.recommendations:
        written = _write_top(result.recommendations, args.write_config, args.force)
    elif args.write_config:
        print(f"note: nothing fits, so no config was written to {args.write_config}", file=sys.stderr)
    if args.json:
        print(result.to_json(inputs_json(args, profile), args.top))
        return 0
    from rich.console import Console

    from automodel.advisor.render import print_human

    print_human(Console(), result, args.top, argv_from_args(args), written)
    return 0


def _warn_host_ram(recs: tuple[Recommendation, ...], host_mem: str | None, *, detected: bool) -> None:
    """One stderr line per pick whose processes on a node need more host RAM than the node has (--host-mem,
    else this machine's RAM when the GPUs were detected here; no warning for described hardware)."""
    from automodel.catalog.memory.host import host_ram_warning, node_ram_bytes
    from automodel.catalog.units import parse_memory

    if host_mem is not None:
        ram = parse_memory(host_mem, field="--host-mem", limit=None)
    else:
        ram = node_ram_bytes() if detected else None
    for rec in recs:
        per_node = min(rec.plan.gpus, rec.gpus_per_node)
        warning = host_ram_warning(rec.estimate.host_peak, per_node, ram, given=host_mem is not None,
                                   method=rec.plan.method)
        if warning:
            print(f"warning: {rec.model.name} ({rec.plan.method}): {warning}", file=sys.stderr)


def _write_top(recs: tuple[Recommendation, ...], path: str, force: bool) -> tuple[str, Recommendation]:
    """The top pick's config (the trainer runs every method `rank` plans: full, LoRA, QLoRA on one GPU)."""
    from automodel.advisor.configgen import write_config

    return str(write_config(recs[0], path, force=force)), recs[0]


def run_advise(args: argparse.Namespace) -> int:
    from automodel.advisor.wizard import run

    return run(force=args.force)
