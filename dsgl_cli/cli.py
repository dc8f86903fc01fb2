"""The ``dsgl`` Typer app: registers the commands, and is the one place an error becomes one line and an exit code.

Library code raises typed errors (`errors.py`) and never prints them; `report` maps whatever reaches the
command line: a DsglError exits with its own code, an OSError reads '<path>: <strerror>' (exit 1),
Ctrl-C exits 130, anything else is one line naming its type (exit 1). ``DSGL_DEBUG=1`` prints the
traceback before that line. A usage error of the command line itself (an unknown option, a missing
argument) is one line too, exit 2, where Typer would have drawn a box.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import traceback
from typing import Annotated, Any, Callable, Optional, Sequence, TypeVar

import typer

from dsgl_cli import __version__
from dsgl_cli.console import error, one_line
from dsgl_cli.errors import (
    DsglError,
    RaisedOnEveryRank,
    StopRequested,
    os_error_message,
    signal_exit_code,
    signal_label,
)

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "DSGL_DEBUG"

app = typer.Typer(
    name="dsgl",
    help="Unsupervised person re-identification with Disentangled Sample Guidance Learning (DSGL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: what passes through untouched: Typer's own exits and usage errors, and a closed pipe (Typer exits quietly)
_TYPER_OWN = (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError)


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr and return the exit code it maps to (the only such mapping)."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    every_rank = not _process_group_up()
    if isinstance(exc, DsglError):
        message, code = str(exc), exc.exit_code
        every_rank = every_rank or isinstance(exc, RaisedOnEveryRank)
    elif isinstance(exc, KeyboardInterrupt):   # torchrun forwards Ctrl-C to every rank
        signum = getattr(exc, "signum", signal.SIGINT)
        message, code, every_rank = f"interrupted ({signal_label(signum)})", signal_exit_code(signum), True
    elif isinstance(exc, OSError):
        message, code = os_error_message(exc), 1
    else:
        first = one_line(exc) or "no message"
        message, code = (f"unexpected {type(exc).__name__}: {first}; "
                         f"run again with {DEBUG_ENV}=1 to see the traceback"), 1
    error(message, on_every_rank=every_rank)
    return code


def take_over_signals(loads_torch: bool) -> None:
    """Load torch while a signal still ends the process at once (`__main__.py`), then make Ctrl-C and
    SIGTERM interrupts the command handles: one line, its cleanup, exit 130 or 143."""
    if loads_torch:
        import torch  # noqa: F401

    def interrupt(signum: int, frame: Any) -> None:
        raise StopRequested(signum)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, interrupt)


def handle_errors(func: F, loads_torch: bool = True) -> F:
    """Wrap a command so whatever it raises prints one line and exits with its code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            take_over_signals(loads_torch)
            return func(*args, **kwargs)
        except _TYPER_OWN:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(report(exc)) from None

    return wrapper  # type: ignore[return-value]


def _process_group_up() -> bool:
    """Whether this process is in a torchrun process group (errors before it forms are the same on every rank)."""
    module = sys.modules.get("torch.distributed")
    return bool(module is not None and module.is_available() and module.is_initialized())


def _usage_error(exc: typer.TyperException) -> int:
    """A command-line usage error as one line naming the help to read; ``dsgl`` alone still shows the help."""
    code = int(getattr(exc, "exit_code", 2))
    if type(exc).__name__ == "NoArgsIsHelpError":   # Typer drew the help already; plain click carries it here
        if exc.format_message().strip():
            sys.stderr.write(exc.format_message() + "\n")
        return code
    ctx = getattr(exc, "ctx", None)
    hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    error(f"{exc.format_message().rstrip('.')}{hint}", on_every_rank=True)
    return code


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsgl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Train person re-identification models without labels (DSGL, IEEE T-IP 2024)."""


def _register() -> None:
    from dsgl_cli.commands import cluster, embed, evaluate, export, prepare, search, train

    for command in (prepare, train, cluster, evaluate, export, embed, search):
        command.register(app)


_register()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point: usage errors and anything raised outside a command are one line too."""
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="dsgl", standalone_mode=False)
    except typer.TyperException as exc:
        code = _usage_error(exc)
    except typer.Abort:
        error("aborted", on_every_rank=True)
        code = 1
    except (Exception, KeyboardInterrupt) as exc:
        code = report(exc)
    for signum in (signal.SIGINT, signal.SIGTERM):   # the work is over: a late signal must not turn a
        if threading.current_thread() is threading.main_thread():   # finished run into an interrupt
            signal.signal(signum, signal.SIG_IGN)
    end_children()
    sys.exit(code if isinstance(code, int) else 0)


def end_children() -> None:
    """Kill the child processes still alive once the command is over.

    Loader workers ignore SIGTERM (`data/loaders.py`); one that outlived its loader would get
    multiprocessing's exit-time SIGTERM and then be joined for ever: the process would never end.
    """
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    for child in mp.active_children():
        child.kill()
        child.join(timeout=5)
