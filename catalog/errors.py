"""The one user-facing error type. Anything a user can get wrong (a flag, a YAML field, a model name,
hardware that cannot fit) raises UserError; the CLI prints it to stderr and exits with code 2. The CLIs'
argparse parsers raise it too, so a bad flag reads like every other user error."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """A mistake the user can fix. `field` names the flag or YAML path, `hint` says how to fix it."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.field}: " if self.field else ""
        fix = f"\n  fix: {self.hint}" if self.hint else ""
        return f"error: {where}{self.message}{fix}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its complaints raised as a UserError: one line naming the flag and a pointer to
    `--help` on stderr, exit 2, instead of argparse's usage dump. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        field = None
        match = _ARGUMENT.match(message)
        if match:  # "argument --top: must be at least 1" -> field --top
            field, message = match.group(1).split("/")[-1], match.group(2)
        elif message.startswith("the following arguments are required: "):
            field = message.rsplit(": ", 1)[1].split(", ")[0].split("/")[-1]
            message = "is required"
        raise UserError(message, field=field, hint=f"see `{self.prog} --help`")


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in [low, high] (no upper bound when high is None). Its complaint
    becomes the flag's one-line UserError through ArgumentParser.error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def run_cli(body: Callable[[], int | None]) -> int:
    """Run one command line the way every automodel entry point exits: 0 or the body's code; 2 with the
    UserError's one message on stderr (never a traceback); 130 on Ctrl-C; 0 when the reader of our output
    left (`automodel config schema | head`)."""
    try:
        return int(body() or 0)
    except UserError as err:
        print(err.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # keeps the interpreter's final flush quiet
        return 0


_ARGUMENT = re.compile(r"^argument ([^:]+): (.*)$", re.DOTALL)
