"""``python -m dsgl_cli`` and the ``dsgl`` command: a signal-safe start, then the Typer app.

Until a command has loaded its libraries, Ctrl-C or SIGTERM ends the process at once with one line:
nothing has started that could be saved, and an interrupt raised inside torch's C++ start-up
aborted the process (``terminate called after throwing ... KeyboardInterrupt``) or left it to die
by the signal. Each command then takes over the signals (`cli.handle_errors`).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Optional

from dsgl_cli.errors import signal_exit_code, signal_label


def _leave(signum: int, frame: Optional[FrameType]) -> None:
    os.write(2, f"error: interrupted ({signal_label(signum)}) while starting; nothing was started yet\n".encode())
    os._exit(signal_exit_code(signum))


def main() -> None:
    """Console-script entry point."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _leave)
    from dsgl_cli.cli import main as run

    run(sys.argv[1:])


if __name__ == "__main__":
    main()
