"""Decode every image of a data set in parallel: name the unreadable ones, count sizes, modes and duplicates.

Every image is fed to the network as RGB (grayscale, palette, CMYK, 16-bit and alpha images are
converted by Pillow's ``convert("RGB")``, alpha dropped, exactly as training and extraction read
them), so "readable" means: the file decodes fully and converts to RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from PIL import Image

from dsgl_cli.errors import DsglError


def check_image(path: str) -> Optional[str]:
    """None when the file decodes fully into RGB, else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
        return None
    except Exception as exc:  # PIL raises many types for broken files; all mean "unreadable"
        return reason(exc)


def reason(exc: BaseException) -> str:
    """Why an image could not be read, on one line (PIL raises many types for broken files)."""
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]


def unreadable_image(path: str, why: str) -> DsglError:
    """The one user error for an image that cannot be read, wherever it shows up (loader, cache)."""
    return DsglError(f"cannot read image {path}: {why}; find every such file with dsgl prepare --check-images")


def pool_size(workers: int) -> int:
    """Decoding threads: ``workers``, or twice the cores up to 8 (Pillow releases the GIL while decoding)."""
    return max(1, workers or min(8, (os.cpu_count() or 1) * 2))


@dataclass(frozen=True)
class ImageFacts:
    """What one file is: its pixel size and mode as stored, a digest of its bytes, or why it cannot be read."""

    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    digest: str = ""
    error: Optional[str] = None


def inspect_image(path: str) -> ImageFacts:
    """Read the file once: hash its bytes (exact duplicates), decode it fully and convert it to RGB."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return ImageFacts(path, error=reason(exc))
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode, fmt, (width, height) = img.mode, img.format or "?", img.size
            img.convert("RGB").load()
    except Exception as exc:  # PIL raises many types for broken files; all mean "unreadable"
        return ImageFacts(path, digest=digest, error=reason(exc))
    return ImageFacts(path, width, height, mode, fmt, digest)


@dataclass
class ImageSurvey:
    """What decoding every image found: sizes, stored modes, exact duplicates, unreadable files."""

    sizes: Counter[str]                 # "WxH" -> images
    kinds: Counter[str]                 # format and Pillow mode as stored ("JPEG RGB", "PNG L") -> images
    duplicates: list[list[str]]         # groups of byte-identical files, each in path order
    unreadable: list[tuple[str, str]]   # (path, reason)


def survey_images(
    paths: Sequence[str],
    workers: int = 0,
    advance: Optional[Callable[[int], None]] = None,
) -> ImageSurvey:
    """Decode every image on a thread pool (Pillow releases the GIL) and sum up what was found."""
    facts: list[ImageFacts] = []
    with ThreadPoolExecutor(max_workers=pool_size(workers)) as pool:
        for fact in pool.map(inspect_image, paths, chunksize=32):
            facts.append(fact)
            if advance is not None:
                advance(1)
    good = [f for f in facts if f.error is None]
    groups: dict[str, list[str]] = {}
    for f in facts:
        if f.digest:
            groups.setdefault(f.digest, []).append(f.path)
    return ImageSurvey(
        sizes=Counter(f"{f.width}x{f.height}" for f in good),
        kinds=Counter(f"{f.format} {f.mode}" for f in good),
        duplicates=sorted(sorted(g) for g in groups.values() if len(g) > 1),
        unreadable=[(f.path, f.error) for f in facts if f.error is not None],
    )
