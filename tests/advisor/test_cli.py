"""The router: version, help, exit codes, and the torch-free start-up promise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from automodel.advisor import cli


def test_version_prints_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("automodel ")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: automodel" in capsys.readouterr().err


def test_unknown_command_exits_2_with_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: COMMAND: invalid choice: 'frobnicate'") and "usage:" not in err


def test_user_error_becomes_exit_2_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from automodel.catalog.errors import UserError

    def boom(_args: object) -> int:
        raise UserError("no such thing", field="--gpu", hint="pick one from `automodel gpus`")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("boom")
    p.set_defaults(func=boom)
    assert cli.main(["boom"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: --gpu: no such thing" in captured.err
    assert "fix: pick one" in captured.err


def test_building_the_parser_does_not_import_torch() -> None:
    code = "import sys, automodel.advisor.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_entry_point_exits_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    from automodel.catalog.errors import UserError, run_cli

    def interrupted() -> int:
        raise KeyboardInterrupt

    def user_error() -> int:
        raise UserError("bad", field="--x")

    assert run_cli(lambda: None) == 0 and run_cli(lambda: 3) == 3
    assert run_cli(user_error) == 2 and "error: --x: bad" in capsys.readouterr().err
    assert run_cli(interrupted) == 130 and "interrupted" in capsys.readouterr().err
