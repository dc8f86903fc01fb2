"""The ``dsgl`` Typer app: registers the commands and turns user errors into one line and an exit code."""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from dsgl_cli import __version__
from dsgl_cli.console import error
from dsgl_cli.errors import DsglError, RaisedOnEveryRank

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="dsgl",
    help="Unsupervised person re-identification with Disentangled Sample Guidance Learning (DSGL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def handle_errors(func: F) -> F:
    """Wrap a command so a DsglError prints one line and exits with its code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DsglError as exc:
            error(str(exc), on_every_rank=isinstance(exc, RaisedOnEveryRank) or not _process_group_up())
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _process_group_up() -> bool:
    """Whether this process is in a torchrun process group (errors before it forms are the same on every rank)."""
    module = sys.modules.get("torch.distributed")
    return bool(module is not None and module.is_available() and module.is_initialized())


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


def main() -> None:
    """Console-script entry point."""
    app()
