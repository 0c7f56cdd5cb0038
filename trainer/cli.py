"""`automodel finetune | validate | config`: parse, call one function, render.

The router in advisor/cli.py hands these commands here before argparse sees them, because everything
after `-c CFG.yaml` that is not a launcher flag is a free-form `key.sub=value` override. Also runnable as
`python -m automodel.trainer.cli ...` (that is how torchrun starts the workers).
Exit codes: 0 success, 2 user error (one message on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from automodel.catalog.errors import ArgumentParser, UserError, int_in, run_cli
from automodel.trainer.config import TrainConfig, config_from_data, dump_yaml, read_yaml
from automodel.trainer.config_data import PLACEHOLDER
from automodel.trainer.data import is_local_source
from automodel.trainer.environment import Environment, check_output_dir, missing_for, probe, readiness
from automodel.trainer.launch import Topology, launch
from automodel.trainer.overrides import section_of, split_overrides
from automodel.trainer.tasks import TASKS

if TYPE_CHECKING:
    from automodel.catalog.memory.plan import MemoryEstimate
    from automodel.catalog.registry import ResolvedModel


EXAMPLES = """\
examples:
  automodel finetune llm -c examples/llm/tiny_offline.yaml
  automodel finetune llm -c examples/llm/tiny_offline.yaml output_dir=/tmp/run schedule.max_steps=20
  automodel finetune llm -c examples/llm/llama_3_2_1b_squad.yaml --dry-run --nproc-per-node 8
  automodel finetune llm -c cfg.yaml --nproc-per-node 8 --nnodes 2 --node-rank 0 \\
      --master-addr 10.0.0.1 --master-port 29500
  automodel finetune llm -c cfg.yaml --nproc-per-node 8 --nnodes 2 --rdzv-endpoint node001:29500 --rdzv-id job7
  automodel slurm -c cfg.yaml --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00 -o job.sbatch
  automodel validate -c examples/llm/qwen_3_0p6b_hellaswag.yaml --peft.rank 32
  automodel config schema > train-config.schema.json

overrides (after -c, later ones win; defaults < YAML < command line):
  key.sub=value   --key.sub=value   --key.sub value
  values are typed by the schema: peft.rank=8, peft.target_modules=[q_proj,v_proj], model.name=qwen3-0.6b
  ${NAME} and ${NAME,default} read environment variables; secret-looking ones (TOKEN, KEY, SECRET,
  PASSWORD) stay `${NAME}` in every saved or printed config.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="automodel", description="Fine-tune from a validated config.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, type=Path, help="training config YAML")
        p.add_argument("--nproc-per-node", type=int_in(1), default=1, help="processes per node (default 1)")
        p.add_argument("--nnodes", type=int_in(1), default=1, help="nodes (default 1)")

    ft = sub.add_parser("finetune", help="fine-tune from a config", epilog=EXAMPLES, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ft.add_argument("task", choices=TASKS, help="task adapter to run")
    with_config(ft)
    ft.add_argument("--node-rank", type=int_in(0), default=0, help="this node's rank (multi-node)")
    ft.add_argument("--master-addr", help="rank-0 node address (multi-node)")
    ft.add_argument("--master-port", type=int_in(1, 65535), help="rank-0 node port (multi-node)")
    ft.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="torchrun c10d rendezvous (multi-node, instead of "
                    "--master-addr/--node-rank): the same on every node")
    ft.add_argument("--rdzv-id", help="the job's id at the rendezvous (the same on every node; default automodel)")
    ft.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and the memory "
                    "estimate, and exit")
    ft.add_argument("--host-mem", metavar="GB", help="RAM per node for --dry-run's host-memory check (default: "
                    "this machine's)")

    val = sub.add_parser("validate", help="check a config without training", epilog=EXAMPLES, allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    with_config(val)

    doc = sub.add_parser("doctor", help="what this machine can train: versions, GPUs, disk, per task x method",
                         allow_abbrev=False)
    doc.add_argument("--output-dir", default=".", help="where runs will write (free disk is measured there)")
    doc.add_argument("--json", action="store_true", help="print one JSON document")

    sl = sub.add_parser("slurm", help="write an sbatch script that runs a config on N nodes", epilog=EXAMPLES,
                        allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    sl.add_argument("-c", "--config", required=True, type=Path, help="training config YAML")
    sl.add_argument("--nodes", type=int_in(1), required=True, help="nodes to run on")
    sl.add_argument("--gpus-per-node", type=int_in(1), required=True, help="GPUs (processes) per node")
    sl.add_argument("--partition", help="Slurm partition")
    sl.add_argument("--account", help="Slurm account")
    sl.add_argument("--time", help="time limit, HH:MM:SS or D-HH:MM:SS")
    sl.add_argument("--job-name", default="automodel", help="Slurm job name (default automodel)")
    sl.add_argument("-o", "--output", type=Path, help="write the script here (default: print it)")

    conf = sub.add_parser("config", help="config utilities", allow_abbrev=False)
    conf.add_argument("action", choices=("schema",), help="schema: print the config's JSON Schema")
    conf.add_argument("--format", choices=("json", "markdown"), default="json",
                      help="json: JSON Schema for editors; markdown: one table per section (docs)")
    return parser


def load(path: Path, overrides: Sequence[str], task: str | None = None) -> TrainConfig:
    """The config the command works on; the positional task fills `task` unless the YAML disagrees."""
    data = read_yaml(path)
    if task is not None:
        written = data.get("task")
        if written is not None and written != task:
            raise UserError(f"the config is for task `{written}`, the command asked for `{task}`", field="task",
                            hint=f"run `automodel finetune {written} ...` or fix `task:` in {path}")
        overrides = [f"task={task}", *overrides]
    return config_from_data(data, overrides)


def resolve_model(cfg: TrainConfig) -> ResolvedModel:
    """The catalog's resolution of model.name (errors name the YAML path, not the estimate's MODEL)."""
    from automodel.catalog.registry import resolve

    try:
        return resolve(cfg.model.name)
    except UserError as err:
        raise UserError(err.message, field="model.name", hint=err.hint) from None


def check_run(cfg: TrainConfig, world_size: int) -> list[str]:
    """What `validate` checks beyond the schema; returns a summary, raises UserError on the first problem."""
    return _check_and_resolve(cfg, world_size)[0]


def _check_and_resolve(cfg: TrainConfig, world_size: int) -> tuple[list[str], ResolvedModel]:
    """`check_run`'s summary, and model.name's catalog resolution it made (dry-run estimates from it)."""
    lines = []
    files = [("data.source", cfg.data.source)]
    if cfg.data.validation is not None and cfg.data.validation.source is not None:
        files.append(("data.validation.source", cfg.data.validation.source))
    for field, source in files:
        if PLACEHOLDER in source:
            raise UserError(f"`{source}` is a placeholder (written by `automodel recommend`), not a dataset",
                            field=field, hint="give your data: a local .jsonl/.json/.csv/.parquet file or an HF "
                            f"dataset name, e.g. {field}=data/train.jsonl")
        if is_local_source(source) and not Path(source).is_file():
            raise UserError(f"no such file: {source}", field=field,
                            hint="give an existing local file (relative to the current directory) or an HF dataset name")
    if cfg.task == "llm":  # the llm formats' columns; vlm/asr rows are checked by their adapters
        cfg.data.check_columns()
    check_output_dir(cfg.output_dir, writable=False)  # the run also tries writing there; validate writes nothing
    if cfg.checkpoint.resume not in ("auto", "never") and not Path(cfg.checkpoint.resume).is_dir():
        raise UserError(f"no such checkpoint directory: {cfg.checkpoint.resume}", field="checkpoint.resume",
                        hint="use auto, never, or an existing checkpoint directory")
    cfg.peft.check_world_size(world_size)  # qlora: one process
    cfg.optimizer.check_world_size(world_size)  # adamw-8bit: one process
    cfg.distributed.check_world_size(world_size)  # strategy none: 1 process; cpu offload: 2+
    resolved = resolve_model(cfg)
    if cfg.peft.adapters and cfg.peft.target_modules != "all-linear":
        from automodel.catalog.architecture import dims_from_config

        dims = dims_from_config(resolved.config)
        unknown = dims.unknown_targets(cfg.peft.target_modules)
        if unknown:  # peft skips unknown names while another matches: a typo would silently train less
            raise UserError(f"{', '.join(unknown)} matches no linear layer of {cfg.model.name} that LoRA adapts "
                            "(the output head never is)",
                            field="peft.target_modules",
                            hint=f"use all-linear or some of: {', '.join(sorted({lin.name for lin in dims.linears}))}")
    accum = cfg.schedule.accumulation_steps(world_size)
    lines.append(f"model      {cfg.model.name} -> {resolved.hf_id or resolved.name} ({resolved.source})")
    lines.append(f"data       {cfg.data.source} ({cfg.data.format}, max_seq_len {cfg.data.max_seq_len})")
    lines.append(f"batch      global {cfg.schedule.global_batch_size} = micro {cfg.schedule.micro_batch_size} x "
                 f"{world_size} processes x {accum} accumulation steps")
    context = resolved.context_length
    if context and cfg.data.max_seq_len > context:
        # A warning, not an error: RoPE models run past their trained length (worse quality, more memory);
        # learned-position models (GPT-2, Whisper's decoder) fail at the first sample that long.
        lines.append(f"warning    data.max_seq_len {cfg.data.max_seq_len} is beyond {cfg.model.name}'s context "
                     f"length of {context}; samples longer than {context} tokens train positions the model never saw")
    return lines, resolved


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        validators = [m for m in args[1:] if isinstance(m, AfterValidator)]
        return "column path" if args[0] is str and validators else _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| none" if type(None) in args else "")
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args[-1] is Ellipsis else f"[{', '.join(map(_type_name, args))}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, tuple):
        return f"`[{', '.join(map(str, value))}]`"
    return "none" if value is None else f"`{json.dumps(value)}`"


def schema_markdown(model: type[BaseModel] = TrainConfig, prefix: str = "") -> str:
    """The schema as one markdown table per section (docs/training.md embeds this output)."""
    rows, sections = [], []
    for name, info in model.model_fields.items():
        sub = section_of(info.annotation)
        if sub is not None:
            sections.append(schema_markdown(sub, f"{prefix}{name}."))
        else:
            rows.append(f"| `{prefix}{name}` | {_type_name(info.rebuild_annotation())} | {_default(info)} | {info.description} |")
    head = f"### `{prefix.rstrip('.') or 'top level'}`\n\n" + (f"{model.__doc__.strip()}\n\n" if prefix and model.__doc__ else "")
    table = head + "| key | type | default | meaning |\n| --- | --- | --- | --- |\n" + "\n".join(rows) if rows else ""
    return "\n\n".join(part for part in (table, *sections) if part)


def render_estimate(estimate: MemoryEstimate, world_size: int, *, grad_ckpt: bool, width: int | None = None) -> str:
    """The estimator's per-GPU answer as a rich table (plain text when not a terminal), at the terminal's
    width (or `width`)."""
    import shutil

    from rich.console import Console
    from rich.table import Table

    from automodel.catalog.memory.plan import term_label

    gib = 1024**3
    table = Table(highlight=False)
    table.add_column("term", no_wrap=True)
    table.add_column("GiB", justify="right", no_wrap=True)
    for term, value in estimate.breakdown().items():
        table.add_row(term_label(term), f"{value / gib:.2f}")
    table.add_row("peak allocated", f"{estimate.peak_allocated / gib:.2f}", style="bold")
    table.add_row("peak reserved", f"{estimate.peak_reserved / gib:.2f}", style="bold")
    if estimate.host_peak:
        table.add_section()
        table.add_row("host RAM / process (peak)", f"{estimate.host_peak / gib:.2f}")
    console = Console(file=io.StringIO(), width=width or shutil.get_terminal_size().columns,
                      force_terminal=sys.stdout.isatty(), highlight=False)
    console.print(f"memory estimate per GPU ({estimate.engine}, {world_size} GPU{'s' if world_size > 1 else ''}, "
                  f"grad ckpt {'on' if grad_ckpt else 'off'}):")
    console.print(table)
    console.print(f"params {estimate.params:,}, trainable {estimate.trainable_params:,}")
    for assumption in estimate.assumptions:
        console.print(f"assumes: {assumption}", markup=False)
    return console.file.getvalue().rstrip()  # type: ignore[attr-defined]


def dry_run(cfg: TrainConfig, world_size: int, *, processes_per_node: int = 1, host_mem: str | None = None) -> str:
    """Resolved YAML, checks and the memory estimate of this run (and a warning when a node's RAM, given or
    detected, is too small for its processes' host memory)."""
    from automodel.catalog.memory.estimate import estimate
    from automodel.catalog.memory.host import host_ram_warning, node_ram_bytes
    from automodel.catalog.units import parse_memory

    summary, resolved = _check_and_resolve(cfg, world_size)
    plan = cfg.to_plan(world_size)
    result = estimate(resolved.config, plan)
    ram = parse_memory(host_mem, field="--host-mem", limit=None) if host_mem is not None else node_ram_bytes()
    warning = host_ram_warning(result.host_peak, processes_per_node, ram, given=host_mem is not None,
                               method=plan.method)
    if warning:
        summary.append(f"warning    {warning}")
    grad_ckpt = cfg.distributed.activation_checkpointing
    return "\n".join([dump_yaml(cfg).rstrip(), "---", *summary, render_estimate(result, world_size, grad_ckpt=grad_ckpt)])


def render_doctor(env: Environment) -> str:
    """`automodel doctor` for people: the facts, then one row per task x method."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=io.StringIO(), force_terminal=sys.stdout.isatty(), highlight=False)
    facts = Table(title="this machine", show_header=False, box=None, padding=(0, 2, 0, 0))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("python", env.python)
    for package in env.packages.values():
        facts.add_row(package.name, package.describe() + (f" ({env.torch_build} build)" if package.name == "torch"
                                                          and package.usable else ""))
    gpus = ", ".join(f"{g.index}: {g.name} {g.memory_bytes / 2**30:.0f} GiB, bf16 {'yes' if g.bf16 else 'no'}"
                     for g in env.gpus)
    facts.add_row("GPUs", gpus or "none visible (CPU only)")
    facts.add_row("NCCL", "available" if env.nccl else "not available (gloo only: CPU or one GPU)")
    facts.add_row("HF token", "set (value not shown)" if env.hf_token_set else "not set (gated models need "
                  "`hf auth login` or HF_TOKEN)")
    facts.add_row("HF cache", env.hf_cache)
    free = "unknown" if env.free_disk_bytes is None else f"{env.free_disk_bytes / 2**30:.1f} GiB free"
    facts.add_row("disk", f"{free} at {env.output_dir}")
    facts.add_row("host RAM", "unknown" if env.host_ram_bytes is None else f"{env.host_ram_bytes / 2**30:.1f} GiB")
    console.print(facts)
    ready = Table(title="ready to train?")
    for name in ("task", "method", "verdict"):
        ready.add_column(name, no_wrap=name != "verdict", overflow="fold")
    for row in readiness(env):
        verdict = (Text(f"ready on {row.device}", style="green") if row.ready
                   else Text("missing: " + "; ".join(row.missing), style="red"))
        ready.add_row(row.task, row.method, verdict)
    console.print(ready)
    return console.file.getvalue().rstrip()  # type: ignore[attr-defined]


def check_machine(cfg: TrainConfig) -> None:
    """`finetune`'s pre-flight: the doctor's checks for this task x method, the first missing piece named."""
    env = probe(cfg.output_dir, gpu_details=False)
    method = cfg.peft.plan_method
    missing = missing_for(env, cfg.task, method)
    if missing:
        first = missing[0]  # the method's own pieces are the method's field; the rest the task's
        method_piece = first.split(" ")[0] in ("peft", "bitsandbytes") or "CUDA" in first
        field = "peft.method" if method != "full" and method_piece else "task"
        message = first if first.startswith(method) else f"this machine cannot run {cfg.task} {method}: {first}"
        raise UserError(message, field=field, hint="`automodel doctor` lists what this machine has and lacks")


def run_command(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.command == "doctor":
        env = probe(args.output_dir)
        print(json.dumps(env.to_json(), indent=1) if args.json else render_doctor(env))
        return 0
    if args.command == "config":
        schema = TrainConfig.model_json_schema()
        print(json.dumps(schema, indent=2) if args.format == "json" else schema_markdown())
        return 0
    if args.command == "slurm":
        return write_slurm(args, overrides)
    world = args.nproc_per_node * args.nnodes
    if args.command == "validate":
        cfg = load(args.config, overrides)
        print("\n".join(["config ok", *check_run(cfg, world)]))
        return 0
    cfg = load(args.config, overrides, args.task)
    topo = Topology(args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port,
                    args.rdzv_endpoint, args.rdzv_id)
    topo.check()
    if args.dry_run:  # validation and the estimate: no machine checks
        print(dry_run(cfg, topo.world_size, processes_per_node=topo.nproc_per_node, host_mem=args.host_mem))
        return 0
    # The same checks as `validate` before anything heavy loads: a typo in peft.target_modules must stop
    # the run here, not train fewer layers in silence.
    for line in check_run(cfg, topo.world_size):
        if line.startswith("warning"):
            print(line, file=sys.stderr)
    check_machine(cfg)  # then what this machine lacks for the task x method (the doctor's checks)
    return launch(cfg, topo)


def write_slurm(args: argparse.Namespace, overrides: list[str]) -> int:
    """`automodel slurm`: check the config for nodes x GPUs, then write (or print) the sbatch script."""
    from automodel.trainer.slurm import SlurmJob, render

    cfg = load(args.config, overrides)
    for line in check_run(cfg, args.nodes * args.gpus_per_node):
        if line.startswith("warning"):
            print(line, file=sys.stderr)
    job = SlurmJob(task=cfg.task, config=args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                   overrides=list(overrides), partition=args.partition, account=args.account, time=args.time,
                   job_name=args.job_name)
    script = render(job)
    if args.output is None:
        print(script, end="")
        return 0
    try:
        args.output.write_text(script)
    except OSError as err:
        raise UserError(f"cannot write {args.output}: {err.strerror}", field="-o",
                        hint="give a writable path for the script") from None
    print(f"wrote {args.output}: submit it with `sbatch {args.output}`", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        args, extra = build_parser().parse_known_args(args_list)
        if args.command in ("config", "doctor") and extra:
            raise UserError(f"unexpected arguments: {' '.join(extra)}", field="config schema")
        split_overrides(extra)  # malformed tokens fail here with the token named
        return run_command(args, extra)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
