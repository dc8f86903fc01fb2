"""The one Rich console pair, its progress bars and message helpers; the engine reports through them.

Output has two readers: a person at a terminal, and a log file or a pipe that someone greps later.

* On a terminal, stage bars are live and transient (they leave no line behind) and can carry a line
  about the whole run (epoch, ETA). Text is never cut into lines by Rich (soft wrap): the terminal
  folds a long path on screen, and copying it gives the path whole.
* In a file or a pipe nothing is laid out for a screen: no wrapping, no "..." truncation, tables at
  their natural width, no trailing padding, and no progress bars at all. Not even a summary line per
  stage: the durations that matter are in the line each epoch leaves (and in metrics.jsonl), commands
  print their results, and a line per stage would triple a training log with figures it already has.

Messages are plain text, never Rich markup, so a path with brackets prints as it is; errors and
warnings are one line each (`one_line`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

from rich.console import Console, ConsoleDimensions, RenderableType
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
from rich.segment import Segment
from rich.text import Text

#: the width a file or a pipe gets: wide enough that no line of ours is wrapped or cut
UNLIMITED_WIDTH = 10_000
#: spaces Rich pads a line with (table cells, centred titles), dropped before a newline in a file
_PADDING = re.compile(r"[ \t]+(?=\r?\n)")
#: what an error line says when it had more lines than the one it shows
DEBUG_HINT = "DSGL_DEBUG=1 shows all of it"


class DsglConsole(Console):
    """A Rich console that lays text out for a screen only when it writes to one (see the module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("highlight", False)
        kwargs.setdefault("soft_wrap", True)
        super().__init__(**kwargs)

    @property
    def writes_to_screen(self) -> bool:
        """A terminal that understands cursor movement (live bars); not a file, a pipe or TERM=dumb."""
        return self.is_terminal and not self.is_dumb_terminal

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNLIMITED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        text = super()._render_buffer(buffer)
        return text if self.is_terminal else _PADDING.sub("", text)


console = DsglConsole()
err_console = DsglConsole(stderr=True)


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


def one_line(message: object, hint: str = "") -> str:
    """The first line of ``message``; further lines are named as elided (with ``hint``), never printed."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    more = len(lines) - 1
    return f"{lines[0]} ({more} more line{'s' if more > 1 else ''} elided{'; ' + hint if hint else ''})"


def counted(n: int, noun: str, plural: str = "") -> str:
    """'1 camera', '4 cameras', '1,400 images': a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def info(message: str) -> None:
    """A plain progress message (plain text: brackets in it are printed, not read as markup)."""
    console.print(Text(str(message)))


def warn(message: str) -> None:
    """A warning the user should read, not an error; one line."""
    err_console.print(Text.assemble(("warning:", "yellow"), " ", one_line(message)))


def error(message: str, on_every_rank: bool = False) -> None:
    """The one-line error the CLI prints before a non-zero exit.

    Under torchrun an error raised by every rank together (``on_every_rank``) is printed by rank 0
    alone; an error of one rank's own is printed by that rank at once, marked with its rank.
    """
    line = one_line(message, DEBUG_HINT)
    if _rank != 0:
        if not on_every_rank:
            DsglConsole(stderr=True).print(Text.assemble((f"rank {_rank}: error:", "bold red"), " ", line))
        return
    err_console.print(Text.assemble(("error:", "bold red"), " ", line))


def format_duration(seconds: float) -> str:
    """'42 s', '4 min 30 s', '2 h 05 min': how long something took, to the precision a person reads."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_eta(seconds: float) -> str:
    """'40 s', '4 min', '2 h 05 min': an estimate, as coarse as it deserves (minutes rounded up)."""
    if seconds < 60:
        return f"{max(1, int(round(seconds)))} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class _StageProgress(Progress):
    """A Progress whose display starts with a line about the whole run (epoch, ETA), redrawn with it."""

    def __init__(self, *columns: Any, context: Optional[Callable[[], str]] = None, **kwargs: Any) -> None:
        self._context = context   # before Progress.__init__, which already renders once
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        text = self._context() if self._context is not None else ""
        if text:
            yield Text(text, style="bold")
        yield from super().get_renderables()


def make_progress(transient: bool = False, context: Optional[Callable[[], str]] = None) -> Progress:
    """A progress display with stage, bar, counts, a free-text field and the ETA (under ``context``'s line)."""
    return _StageProgress(
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
        context=context,
    )


@contextmanager
def stage(description: str, total: Optional[int], transient: bool = True,
          context: Optional[Callable[[], str]] = None) -> Iterator["StageBar"]:
    """One live bar for one stage (extract, cluster, train, evaluate) that disappears when done.

    ``context`` gives the line shown above the bar (the run's epoch and ETA). Nothing is drawn where
    the console does not write to a screen (module doc).
    """
    if not console.writes_to_screen or console.quiet:
        yield StageBar(None, None)
        return
    with make_progress(transient=transient, context=context) as progress:
        task = progress.add_task(description, total=total, status="")
        yield StageBar(progress, task)


class StageBar:
    """A handle the engine advances without knowing about Rich (or whether anything is drawn)."""

    def __init__(self, progress: Optional[Progress], task: Optional[TaskID]) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1, status: Optional[str] = None) -> None:
        if self._progress is None or self._task is None:
            return
        if status is None:
            self._progress.advance(self._task, n)
        else:
            self._progress.update(self._task, advance=n, status=status)

    def set_total(self, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)
