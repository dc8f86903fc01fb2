"""Whatever reaches the command line is one line on stderr and an exit code, mapped in cli.py alone."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dsgl_cli import cli
from dsgl_cli.cli import app, handle_errors, main
from dsgl_cli.errors import DsglError, os_error_message

runner = CliRunner()


def _app_raising(exc: BaseException) -> typer.Typer:
    """A one-command app whose command raises ``exc`` through the same wrapper every dsgl command has."""
    tiny = typer.Typer(pretty_exceptions_enable=False)

    @tiny.command()
    @handle_errors
    def boom() -> None:
        raise exc

    @tiny.command()
    def other() -> None:
        pass

    return tiny


@pytest.mark.parametrize("exc, code, line", [
    (DsglError("--eps 3: must be in (0, 1)", exit_code=2), 2, "error: --eps 3: must be in (0, 1)"),
    (DsglError("checkpoint broken\nsecond line\nthird"), 1,
     "error: checkpoint broken (2 more lines elided; DSGL_DEBUG=1 shows all of it)"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/demo/train.log"), 1,
     "error: /runs/demo/train.log: No space left on device; free some space or write to another disk"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x.jpg"), 1,
     "error: /data/x.jpg: Permission denied; check the permissions or write elsewhere"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), 1,
     "error: /a -> /b: Invalid cross-device link"),
    (ValueError("too many values to unpack\n(expected 2)"), 1,
     "error: unexpected ValueError: too many values to unpack (1 more line elided); "
     "run again with DSGL_DEBUG=1 to see the traceback"),
    (RuntimeError(""), 1,
     "error: unexpected RuntimeError: no message; run again with DSGL_DEBUG=1 to see the traceback"),
    (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C)"),
])
def test_every_exception_is_one_line_and_its_exit_code(exc, code, line, monkeypatch):
    monkeypatch.delenv("DSGL_DEBUG", raising=False)
    result = runner.invoke(_app_raising(exc), ["boom"])
    assert result.exit_code == code
    assert result.stderr.splitlines() == [line] and result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)   # nothing escaped


def test_dsgl_debug_prints_the_traceback_before_the_line(monkeypatch):
    monkeypatch.setenv("DSGL_DEBUG", "1")
    result = runner.invoke(_app_raising(ZeroDivisionError("division by zero")), ["boom"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "ZeroDivisionError: division by zero" in lines
    assert lines[-1].startswith("error: unexpected ZeroDivisionError: division by zero")


def test_a_real_command_maps_an_os_error(tmp_path: Path, monkeypatch):
    from dsgl_cli.commands import evaluate

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ranked_lists" / "q1.jpg"))

    monkeypatch.setattr(evaluate, "run_evaluation", full_disk)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "ck.pth"), "-d", "demo"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'ranked_lists' / 'q1.jpg'}: No space left on device; "
                                          "free some space or write to another disk"]


def test_os_error_message_without_paths():
    exc = OSError(errno.ENOSPC, "No space left on device", "/tmp/.x.123.abcdef12.tmp")
    assert os_error_message(exc, paths=False) == "No space left on device; free some space or write to another disk"
    assert os_error_message(OSError("odd")) == "odd"


# ----------------------------------------------------------------------------- the entry point
def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize("argv, line", [
    (["train", "--no-such-flag"], "error: No such option: --no-such-flag"),
    (["train", "-b", "abc"], "error: Invalid value for '-b' / '--batch-size': "),
    (["evaluate"], "error: Missing argument 'checkpoint'; see 'dsgl evaluate --help'"),
    (["no-such-command"], "error: No such command 'no-such-command'"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, line, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["dsgl", *argv])
    code, out, err = _main(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert err.rstrip().endswith(f"; see 'dsgl {argv[0]} --help'") or argv[0] == "no-such-command", err


def test_the_entry_point_still_helps_and_versions(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["dsgl"])
    code, out, err = _main([], capsys)
    assert code == 2 and "Usage" in out + err and "error:" not in err
    code, out, err = _main(["--version"], capsys)
    assert code == 0 and out.startswith("dsgl ")
    code, out, err = _main(["train", "--help"], capsys)
    assert code == 0 and "--logs-dir" in out


def test_the_entry_point_maps_what_is_raised_outside_a_command(capsys, monkeypatch):
    def broken(**kwargs):
        raise LookupError("no entry point")

    monkeypatch.setattr(cli, "app", broken)
    code, out, err = _main([], capsys)
    assert code == 1 and err.splitlines() == [
        "error: unexpected LookupError: no entry point; run again with DSGL_DEBUG=1 to see the traceback"]

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    code, out, err = _main([], capsys)
    assert code == 130 and err.splitlines() == ["error: interrupted (Ctrl-C)"]
