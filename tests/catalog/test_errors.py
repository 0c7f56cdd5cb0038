"""UserError's rendering and the ArgumentParser that turns argparse's complaints into UserErrors."""

from __future__ import annotations

import pytest

from automodel.catalog.errors import ArgumentParser, UserError


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
