"""The one Rich console, its progress bars and message helpers; the engine reports through it."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


_rank = 0


def set_rank(rank: int) -> None:
    """Under torchrun only rank 0 talks: other ranks' output, warnings and Python warnings go quiet."""
    global _rank
    _rank = rank
    quiet = rank != 0
    console.quiet = quiet
    err_console.quiet = quiet
    if quiet:
        warnings.filterwarnings("ignore")


def _rank_from_env() -> int:
    """This process's rank when torchrun started several (so even flag errors print once)."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


if _rank_from_env():
    set_rank(_rank_from_env())


def info(message: str) -> None:
    """A plain progress message."""
    console.print(message)


def warn(message: str) -> None:
    """A warning the user should read, not an error."""
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def error(message: str, on_every_rank: bool = False) -> None:
    """The one-line error the CLI prints before a non-zero exit.

    Under torchrun an error raised by every rank together (``on_every_rank``) is printed by rank 0
    alone; an error of one rank's own is printed by that rank at once, marked with its rank.
    """
    if _rank != 0:
        if not on_every_rank:
            Console(stderr=True, highlight=False).print(f"[bold red]rank {_rank}: error:[/bold red] {message}",
                                                        soft_wrap=True)
        return
    err_console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)


def make_progress(transient: bool = False) -> Progress:
    """A progress display with stage, bar, counts, a free-text field and the ETA."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


@contextmanager
def stage(description: str, total: Optional[int], transient: bool = True) -> Iterator["StageBar"]:
    """One bar for one stage (extract, cluster, train, evaluate) that disappears when done."""
    with make_progress(transient=transient) as progress:
        task = progress.add_task(description, total=total, status="")
        yield StageBar(progress, task)


class StageBar:
    """A handle the engine advances without knowing about Rich."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1, status: Optional[str] = None) -> None:
        if status is None:
            self._progress.advance(self._task, n)
        else:
            self._progress.update(self._task, advance=n, status=status)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)
