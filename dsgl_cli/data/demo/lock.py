"""One writer at a time for the demo folder: commands started together must not regenerate under each other."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def generation_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive POSIX lock beside ``root`` while the block runs (unguarded without fcntl)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): generation stays unguarded
        yield
        return
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
