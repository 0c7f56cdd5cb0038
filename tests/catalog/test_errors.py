"""UserError's rendering and the ArgumentParser that turns argparse's complaints into UserErrors."""

from __future__ import annotations

import re

import pytest

from automodel.catalog.errors import ArgumentParser, UserError, int_in


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--top", type=int)
    run.add_argument("--mode", choices=("a", "b"))
    return parser


def test_render_names_field_and_fix() -> None:
    err = UserError("bad", field="--x", hint="use 1")
    assert err.render() == "error: --x: bad\n  fix: use 1"
    assert UserError("bad").render() == "error: bad"


@pytest.mark.parametrize(
    ("argv", "field", "message"),
    [
        (["run", "-c", "x", "--top", "abc"], "--top", "invalid int value: 'abc'"),
        (["run", "-c", "x", "--mode", "z"], "--mode", "invalid choice: 'z'"),
        (["run"], "--config", "is required"),
        (["walk"], "command", "invalid choice: 'walk'"),
    ],
)
def test_argparse_errors_are_user_errors_naming_the_flag(argv: list[str], field: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        _parser().parse_args(argv)
    assert info.value.field == field
    assert info.value.message.startswith(message)
    assert "--help" in (info.value.hint or "")


def test_unrecognized_arguments_name_no_field() -> None:
    with pytest.raises(UserError) as info:
        _parser().parse_args(["run", "-c", "x", "--bogus"])
    assert info.value.field is None and "--bogus" in info.value.message


def test_int_in_bounds_and_words() -> None:
    import argparse

    assert int_in(1)("3") == 3 and int_in(0)("0") == 0 and int_in(1, 65535)("65535") == 65535
    for parse, text, words in ((int_in(1), "0", "must be at least 1, got 0"), (int_in(1), "x", "'x' is not a whole"),
                               (int_in(1, 10), "11", "must be in [1, 10], got 11")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
            parse(text)
