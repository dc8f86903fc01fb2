"""The user-facing error types and the one "did you mean" hint; the CLI maps them to exit codes.

Library code raises these; `cli.py` turns any of them into one line on stderr and the exit code it
carries, never a traceback. `os_error_message` is how a file-system error reads in that line.
"""

from __future__ import annotations

import difflib
import errno
import os
import signal
from typing import Iterable


class DsglError(Exception):
    """A problem the user can fix (bad input, missing file, hopeless setting).

    The message must fit on one line and say what to do. ``exit_code`` 2 marks a usage
    error (bad flag value), 1 everything else.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def signal_label(signum: int) -> str:
    """How a stop signal is named to the user: Ctrl-C for SIGINT, else its name (SIGTERM)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def signal_exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class StopRequested(KeyboardInterrupt):
    """A stop asked for by a signal; ``signum`` says which (SIGINT or SIGTERM). Raised by the
    command's handler, the trainer's, and a checkpoint write abandoned by a second signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RaisedOnEveryRank(DsglError):
    """An error every rank of a torchrun job raises at the same point (broadcast or agreed on).

    Rank 0 reports it; the other ranks leave quietly, so the user reads it once.
    """


class RunInterrupted(RaisedOnEveryRank):
    """Ctrl-C (SIGINT) or SIGTERM stopped a command; the message says what was kept."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message, exit_code)


class WriteFailed(DsglError):
    """A file dsgl writes for the user (a checkpoint, a log) could not be written; what was there is kept."""


#: what to do about the file-system errors a user can fix, appended to their one line
_OS_HINTS = {
    errno.ENOSPC: "free some space or write to another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.EROFS: "write to a writable disk",
}


def os_error_message(exc: OSError, paths: bool = True) -> str:
    """'<path>: <strerror>' (both paths of a rename; no paths where the caller names the file), plus what
    to do where that is clear; one line."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = [_name(name) for name in (exc.filename, exc.filename2) if name is not None and paths]
    text = f"{' -> '.join(where)}: {what}" if where else what
    hint = _OS_HINTS.get(exc.errno or 0)
    return f"{text}; {hint}" if hint else text


def _name(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name)


def suggest(value: str, choices: Iterable[str]) -> str:
    """A "; did you mean 'x'?" tail for a mistyped choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """The choice ``value`` names (case-insensitive), or a usage error listing the choices."""
    choices = tuple(choices)
    name = str(value).strip()
    for choice in choices:
        if name.lower() == choice.lower():
            return choice
    raise DsglError(f"{what}: '{value}' is not one of {', '.join(choices)}{suggest(name, choices)}", exit_code=2)
