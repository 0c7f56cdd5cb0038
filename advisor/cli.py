"""The `automodel` command: a thin router.

Each command lives in its own module that exposes `register(subparsers)` (adds its parser and sets
`func`) and keeps torch out of its imports. The trainer's own commands (`finetune`, `validate`,
`config`, `doctor`) take free-form `key.sub=value` overrides, so they are handed to `automodel.trainer.cli`
before argparse sees them; that lazy hand-off is the CLI's only edge into the trainer beyond
`trainer.config`.

Exit codes: 0 success, 2 user error (one message on stderr, never a traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from automodel.catalog.errors import ArgumentParser, run_cli

# Command modules, imported at start-up to register their flags; each must be torch-free.
COMMAND_MODULES: tuple[str, ...] = (
    "automodel.advisor.commands_catalog",
    "automodel.advisor.commands_estimate",
    "automodel.advisor.commands_recommend",
)
TRAINER_COMMANDS = ("finetune", "validate", "config", "doctor", "slurm")

EPILOG = """\
commands handed to the trainer:
  finetune {llm,vlm,asr} -c CFG.yaml [overrides]   fine-tune from a validated config
  validate -c CFG.yaml [overrides]                 check a config without training
  config schema                                    print the config's JSON Schema
  doctor [--output-dir DIR] [--json]               what this machine can train (versions, GPUs, disk)
  slurm -c CFG.yaml --nodes N --gpus-per-node G    write an sbatch script for N nodes

examples:
  automodel recommend --task llm --use-case chat --gpu-mem 24
  automodel estimate llama-3.1-8b --method lora --seq-len 4096
  automodel catalog list --task vlm
  automodel finetune llm -c examples/llm/tiny_offline.yaml
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("automodel-advisor")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


class _VersionAction(argparse.Action):
    """argparse's own version action formats its string up front; reading package metadata costs
    ~50 ms of every cold start, so it is looked up only when --version is given."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 - argparse's signature
        print(f"automodel {_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="automodel",
        description="Pick a model, check that it fits, write its training config and fine-tune it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a command that has not landed yet
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if args_list and args_list[0] in TRAINER_COMMANDS:
            return int(importlib.import_module("automodel.trainer.cli").main(args_list) or 0)
        parser = build_parser()
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
