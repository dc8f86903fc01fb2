"""Builders of tiny image data sets in temporary folders, shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (32, 16), color: Optional[tuple] = None) -> None:
    """A small JPEG whose content depends on ``seed`` (or a flat colour plus noise)."""
    rng = np.random.default_rng(seed)
    h, w = size
    if color is None:
        arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    else:
        arr = np.clip(np.array(color, dtype=np.float32) + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def make_split(folder: Path, ids: Iterable[int], cams: Iterable[int], per_cam: int = 1,
               size: tuple[int, int] = (32, 16), colored: bool = False) -> list[Path]:
    """Write ``per_cam`` images for each (id, camera) in Market naming; returns the paths."""
    paths = []
    for pid in ids:
        for cam in cams:
            for k in range(per_cam):
                name = f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{k:06d}_00.jpg"
                path = folder / name
                color = None
                if colored:
                    rng = np.random.default_rng(abs(pid) + 1000)
                    color = tuple(int(c) for c in rng.integers(30, 225, size=3))
                write_image(path, seed=hash((pid, cam, k)) % 2**31, size=size, color=color)
                paths.append(path)
    return paths


def make_market_like(root: Path, train_ids: int = 6, test_ids: int = 4, cams: int = 3, per_cam: int = 2,
                     junk: bool = True, size: tuple[int, int] = (32, 16), colored: bool = False) -> Path:
    """Three Market-named split folders under ``root``: train ids 1.., test ids after them."""
    make_split(root / "bounding_box_train", range(1, train_ids + 1), range(1, cams + 1), per_cam, size, colored)
    test = range(train_ids + 1, train_ids + test_ids + 1)
    make_split(root / "query", test, range(1, cams + 1), 1, size, colored)
    make_split(root / "bounding_box_test", test, range(1, cams + 1), per_cam, size, colored)
    if junk:
        make_split(root / "bounding_box_test", [-1], [1], 2, size)
        make_split(root / "bounding_box_test", [0], [2], 2, size)
    return root
