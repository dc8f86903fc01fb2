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


#: camera names a user might choose: spaces, dashes, digits that sort naturally (gate-2 before gate-10)
CAMERA_NAMES = ("entrance", "gate-2", "gate-10", "Lobby east")
#: the one image per camera stored in an unusual way (the rest are RGB JPEGs)
ODD_MODES = ("L", "RGBA", "CMYK", "WEBP")


def _person_colour(person: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(person + 500)
    return tuple(int(c) for c in rng.integers(30, 225, size=3))  # type: ignore[return-value]


def make_camera_folders(root: Path, cameras: Iterable[str] = CAMERA_NAMES, people: int = 5, per_camera: int = 2,
                        size: tuple[int, int] = (32, 16)) -> dict[str, tuple[str, int]]:
    """One sub-folder per camera holding crops under arbitrary names, some nested in day/hour folders.

    No labels and no query/gallery, as a user's cameras give them. Every person is seen by every
    camera ``per_camera`` times (flat colour of the person + noise, so features can cluster); the
    first image of camera i is stored in mode ODD_MODES[i % 4] (grayscale PNG, RGBA PNG, CMYK JPEG,
    WebP), the rest as RGB JPEGs, and every third image is a little larger. Returns
    {path: (camera, hidden person)} for the tests.
    """
    written: dict[str, tuple[str, int]] = {}
    for ci, camera in enumerate(cameras):
        n = 0
        for person in range(people):
            for k in range(per_camera):
                h, w = (size[0] + 8, size[1] + 4) if (person + k) % 3 == 0 else size
                rng = np.random.default_rng(1000 * ci + 10 * person + k)
                arr = np.clip(np.array(_person_colour(person), dtype=np.float32) + rng.normal(0, 12, size=(h, w, 3)),
                              0, 255).astype(np.uint8)
                img = Image.fromarray(arr)
                sub = Path(f"2024-05-0{1 + k}", f"h{person % 2:02d}") if person % 2 else Path()
                stem = f"{rng.integers(16**6):06x}-{camera.replace(' ', '')}-{n}"
                mode = ODD_MODES[ci % len(ODD_MODES)] if n == 0 else "RGB"
                if mode in ("L", "RGBA"):
                    path = root / camera / sub / f"{stem}.png"
                    img = img.convert(mode)
                elif mode == "WEBP":
                    path = root / camera / sub / f"{stem}.webp"
                else:
                    path = root / camera / sub / f"{stem}.jpg"
                    img = img.convert(mode)
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path, **({"lossless": True} if mode == "WEBP" else {"quality": 92}))
                written[str(path)] = (camera, person)
                n += 1
    return written


def write_manifest(path: Path, rows: Iterable[Iterable[object]], header: str = "path,camera") -> Path:
    """A CSV manifest: the header, then one comma-separated row per item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
