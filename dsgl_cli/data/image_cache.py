"""Decode every train image once into one uint8 tensor, so epochs never touch JPEG again.

When all images share one size (Market-1501: 128 x 64) they are kept at that native size
and the batch path resizes on the device (``BatchAugment``); otherwise each is resized to
the training size with Pillow's bicubic on the way in, exactly what the per-image path does
first, so the batch path then skips its resize. Decoding runs on a thread pool (Pillow
releases the GIL while decoding).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from dsgl_cli.data.images import pool_size, reason, unreadable_image
from dsgl_cli.errors import DsglError


@dataclass(frozen=True)
class ImageCache:
    """N decoded images, uint8 (N, 3, h, w), in the order of the paths they came from."""

    images: torch.Tensor
    native: bool          # True: the images' own shared size; False: resized to the training size

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of every stored image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def nbytes(self) -> int:
        """Memory held by the pixels."""
        return self.images.numel() * self.images.element_size()

    def to(self, device: torch.device) -> "ImageCache":
        """The cache on ``device`` (Market-1501 at 128x64 is 318 MB: it fits any GPU)."""
        return ImageCache(self.images.to(device), self.native)

    def batch(self, indices: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
        """The images at ``indices`` (row order kept) as uint8 on ``device``."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        rows = self.images.index_select(0, index)
        if rows.device == device:
            return rows
        if device.type == "cuda":
            rows = rows.pin_memory()          # lets the copy overlap with compute
        return rows.to(device, non_blocking=True)


def _header_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # PIL raises many types for broken files; all mean "unreadable"
        raise unreadable_image(path, reason(exc)) from None


def _decode(path: str, size: Optional[tuple[int, int]]) -> np.ndarray:
    """RGB pixels (h, w, 3); resized to ``size`` = (width, height) with Pillow's bicubic if given."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        if size is not None:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        return np.array(rgb)          # a writable copy, as torch.from_numpy wants
    except Exception as exc:  # decoding errors surface only here for truncated files
        raise unreadable_image(path, reason(exc)) from None


def decode_images(
    paths: Sequence[str],
    height: int,
    width: int,
    workers: int = 0,
    advance: Optional[Callable[[int], None]] = None,
) -> ImageCache:
    """Decode ``paths`` once; native size if they all share one, else (height, width).

    An unreadable file raises ``DsglError`` naming it.
    """
    paths = [str(p) for p in paths]
    if not paths:
        return ImageCache(torch.empty((0, 3, height, width), dtype=torch.uint8), False)
    workers = pool_size(workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(_header_size, paths, chunksize=64))
        native = len(set(sizes)) == 1
        w, h = sizes[0] if native else (width, height)
        images = torch.empty((len(paths), 3, h, w), dtype=torch.uint8)

        def fill(i: int) -> None:
            pixels = _decode(paths[i], None if native else (width, height))
            if pixels.shape[:2] != (h, w):
                raise DsglError(f"image {paths[i]} decodes to {pixels.shape[1]}x{pixels.shape[0]}, "
                                f"its header says {w}x{h}; re-encode the file")
            images[i] = torch.from_numpy(pixels).permute(2, 0, 1)

        for _ in pool.map(fill, range(len(paths)), chunksize=16):
            if advance is not None:
                advance(1)
    return ImageCache(images, native)
