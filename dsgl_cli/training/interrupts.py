"""Ctrl-C and SIGTERM during training: stop at a step boundary, so the saved state is always whole.

While the trainer runs its steps, a signal only raises a flag that the step loop checks between
steps (a step is seconds at most): weights, optimizer and memories are never caught half-updated,
and a second press changes nothing but the message. Outside the steps (extraction, clustering,
evaluation) a signal stops the work at once. SIGTERM, what batch schedulers send before they kill
a job, is handled like Ctrl-C and ends with its own exit code (143).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator, Optional

from dsgl_cli.errors import StopRequested


class StopSignals:
    """SIGINT/SIGTERM handlers for the length of a training run (main thread only; elsewhere a no-op)."""

    def __init__(self, notify: Optional[Callable[[str], None]] = None) -> None:
        self.requested: Optional[int] = None   # the first signal received
        self.deferring = False
        self.notify = notify
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        first = self.requested is None
        if first:
            self.requested = signum
        if not self.deferring:
            raise StopRequested(self.requested or signum)
        if self.notify is not None:
            self.notify("stopping after this step, then saving a resumable checkpoint" if first else
                        "still stopping: the step in progress finishes first, so the saved state is whole")

    @property
    def stop(self) -> bool:
        return self.requested is not None

    def raise_if_requested(self) -> None:
        if self.requested is not None:
            raise StopRequested(self.requested)

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            self._previous[int(stop_signal)] = signal.signal(stop_signal, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals inside the block only raise the flag; one that came before it stops at once."""
        self.raise_if_requested()
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False


def interrupted_line(checkpoint: Optional[Path], before_resuming: bool = False) -> str:
    """The one line a stopped run ends with: how to resume it, or that there is nothing to resume.

    ``before_resuming``: stopped while a --resume run was still setting up, the file untouched.
    """
    if checkpoint is None:
        return "interrupted before anything was trained; nothing to resume, run the command again"
    if before_resuming:
        return (f"interrupted before training resumed; {checkpoint} is as it was: "
                f"resume with: dsgl train --resume {checkpoint}")
    return f"interrupted; resume with: dsgl train --resume {checkpoint}"
