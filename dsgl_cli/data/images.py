"""Decode every image of a data set in parallel and name the ones that cannot be read."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

from PIL import Image


def check_image(path: str) -> Optional[str]:
    """None when the file decodes fully into RGB, else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
        return None
    except Exception as exc:  # PIL raises many types for broken files; all mean "unreadable"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


def find_unreadable(
    paths: Sequence[str],
    workers: int = 0,
    advance: Optional[Callable[[int], None]] = None,
) -> list[tuple[str, str]]:
    """(path, reason) for every image that fails to decode; decoding runs on a thread pool."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, reason in zip(paths, pool.map(check_image, paths, chunksize=64)):
            if reason is not None:
                bad.append((path, reason))
            if advance is not None:
                advance(1)
    return bad
