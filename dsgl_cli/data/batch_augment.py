"""The train and test transforms of method.md 3 for whole uint8 batches, on any torch device.

Produces what ``augment.PilTrainAugment`` (train) and ``transforms.test_transform`` (test)
produce image by image, so a trainer can keep decoded images in memory and augment a batch
with a few tensor operations instead of a Python call per image.

The resize reproduces Pillow's bicubic ``Image.resize`` on 8-bit images: its filter has
a = -0.5 (torch's ``interpolate(mode="bicubic")`` uses -0.75), a support widened by the scale
when downscaling (antialiasing), coefficients normalised per output pixel and rounded to
22-bit fixed point, and two passes (one per axis) whose results are each rounded to uint8.
Both passes are matrix products in float64: the products of 8-bit pixels and 22-bit
integer coefficients, and their sums, stay below 2**53, so float64 gives Pillow's integers
exactly on any device and under any TF32 setting.

Which pass comes first changes the result (the intermediate is rounded). Pillow up to 12
always ran the horizontal pass first; Pillow 13 runs the vertical one first for some size
changes (tall images scaled down), by a rule of its own. So the order is asked of the
installed Pillow, once per size change, on a noise image (``pillow_vertical_first``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dsgl_cli.data.augment import ERASE_FILL, BatchParams, train_padding, uint8_to_input

_PRECISION_BITS = 22                   # Pillow: 32 bits - 8 for the result - 2 for overflow
_SUPPORT = 2.0                         # bicubic support in output-pixel units at scale 1


def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel, a = -0.5, written in its order of operations."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64 matrix of Pillow's fixed-point bicubic coefficients.

    Row ``o`` holds the coefficients (scaled by 2**22) with which Pillow sums input pixels
    into output pixel ``o`` along one axis of a full-image resize.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    inverse = 1.0 / filterscale          # Pillow multiplies by the reciprocal (not a division)
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = [_bicubic((x - center + 0.5) * inverse) for x in range(lo, hi)]
        total = 0.0
        for tap in taps:                 # plain left-to-right sum, as Pillow's C loop (Python
            total += tap                 # 3.12's sum() would compensate rounding: not Pillow)
        for x, tap in zip(range(lo, hi), taps):
            k = tap / total if total != 0.0 else tap
            fixed = k * (1 << _PRECISION_BITS)
            weights[o, x] = int(fixed - 0.5) if k < 0 else int(fixed + 0.5)
    return weights


def _pass(x: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """One Pillow pass along ``axis`` (-1 width, -2 height) of float64 integer pixels.

    Pillow adds 2**21 and shifts right by 22 (a floor), then clips to 0..255; dividing by a
    power of two is exact, so the float64 result is Pillow's integer.
    """
    acc = x @ weights.T if axis == -1 else weights @ x
    half = float(1 << (_PRECISION_BITS - 1))
    return torch.floor((acc + half) * (1.0 / (1 << _PRECISION_BITS))).clamp_(0.0, 255.0)


def _two_passes(x: torch.Tensor, w_rows: torch.Tensor, w_cols: torch.Tensor,
                vertical_first: bool) -> torch.Tensor:
    """Both passes over float64 (..., h, w) pixels, in Pillow's order for this size change."""
    if vertical_first:
        return _pass(_pass(x, w_rows, -2), w_cols, -1)
    return _pass(_pass(x, w_cols, -1), w_rows, -2)


@lru_cache(maxsize=256)
def pillow_vertical_first(h: int, w: int, height: int, width: int) -> bool:
    """Whether the installed Pillow resizes (h, w) -> (height, width) vertically first.

    Only meaningful when both sizes change. Resizes one seeded noise image with Pillow and
    keeps the order that reproduces it (on noise the two orders differ almost everywhere).
    """
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    target = torch.from_numpy(np.asarray(
        Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)
    ).astype(np.float64)).permute(2, 0, 1)
    x = torch.from_numpy(noise.astype(np.float64)).permute(2, 0, 1)
    w_rows = torch.from_numpy(pil_bicubic_weights(h, height).astype(np.float64))
    w_cols = torch.from_numpy(pil_bicubic_weights(w, width).astype(np.float64))
    err = [float((_two_passes(x, w_rows, w_cols, first) - target).abs().max()) for first in (False, True)]
    return err[1] < err[0]


#: columns of a parameter table: flip, crop top, crop left, erase, erase box (top, left, height, width)
PARAM_COLUMNS = 8


def param_table(params: BatchParams) -> np.ndarray:
    """A batch's parameters as one (B, `PARAM_COLUMNS`) int64 array."""
    return np.column_stack([params.flip, params.crop_top, params.crop_left, params.erase, params.box]
                           ).astype(np.int64).reshape(len(params), PARAM_COLUMNS)


class BatchAugment:
    """method.md 3 for batches: ``train`` (with drawn parameters) and ``test`` (resize, normalise).

    Input: uint8 (B, 3, h, w) on any device; h x w may differ from the training size, in which
    case the batch is first resized as Pillow would (weights built once per size and device).
    """

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width
        self.pad = train_padding(height)
        self._weights: dict[tuple[int, int, str], torch.Tensor] = {}
        self._fill: dict[str, torch.Tensor] = {}

    def _matrix(self, in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
        key = (in_size, out_size, str(device))
        if key not in self._weights:
            w = torch.from_numpy(pil_bicubic_weights(in_size, out_size).astype(np.float64))
            self._weights[key] = w.to(device)
        return self._weights[key]

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> uint8 (B, 3, H, W), Pillow's bicubic; unchanged at H x W."""
        _check_batch(images)
        h, w = images.shape[-2:]
        if (h, w) == (self.height, self.width):
            return images
        x = images.to(torch.float64)
        device = images.device
        if w == self.width:                 # Pillow skips a pass whose size does not change
            x = _pass(x, self._matrix(h, self.height, device), -2)
        elif h == self.height:
            x = _pass(x, self._matrix(w, self.width, device), -1)
        else:
            x = _two_passes(x, self._matrix(h, self.height, device), self._matrix(w, self.width, device),
                            pillow_vertical_first(h, w, self.height, self.width))
        return x.to(torch.uint8)

    def test(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise: the extraction input, equal to ``test_transform`` per image."""
        return uint8_to_input(self.resize(images))

    def train(self, images: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """Resize, flip, zero pad + crop, normalise, erase, with each image's drawn parameters."""
        if len(params) != images.shape[0]:
            raise ValueError(f"{len(params)} parameter rows for a batch of {images.shape[0]} images")
        return self.train_table(images, torch.from_numpy(param_table(params)).to(images.device, non_blocking=True))

    def train_table(self, images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """`train` with the parameters as a (B, `PARAM_COLUMNS`) int64 table already on the device."""
        x = self.resize(images)
        flip, top, left, erase = table[:, 0].bool(), table[:, 1], table[:, 2], table[:, 3].bool()
        x = self._flip_pad_crop(x, flip, top, left)
        out = uint8_to_input(x)
        return self._erase(out, erase, table[:, 4:8])

    def _flip_pad_crop(self, x: torch.Tensor, flip: torch.Tensor, top: torch.Tensor,
                       left: torch.Tensor) -> torch.Tensor:
        """Pad zeros, then gather each image's rows and (mirrored when flipped) columns.

        Padding is symmetric, so flipping before padding equals flipping the padded image:
        output column j of a flipped image is padded column (W + 2p - 1) - (left + j).
        """
        b, c = x.shape[:2]
        p, hh, ww = self.pad, self.height, self.width
        padded = F.pad(x, (p, p, p, p))
        rows = top[:, None] + torch.arange(hh, device=x.device)
        cols = left[:, None] + torch.arange(ww, device=x.device)
        cols = torch.where(flip[:, None], (ww + 2 * p - 1) - cols, cols)
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, hh, ww + 2 * p))
        return x.gather(3, cols[:, None, None, :].expand(b, c, hh, ww))

    def _erase(self, out: torch.Tensor, erase: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """Write the raw fill values into each erased box (one mask for the whole batch)."""
        ys = torch.arange(self.height, device=out.device)[None, :, None]
        xs = torch.arange(self.width, device=out.device)[None, None, :]
        top, left, h, w = (box[:, i, None, None] for i in range(4))
        mask = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w) & erase[:, None, None]
        key = f"{out.device}:{out.dtype}"
        if key not in self._fill:
            self._fill[key] = torch.tensor(ERASE_FILL, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
        return torch.where(mask[:, None], self._fill[key], out)


def _check_batch(images: torch.Tensor) -> None:
    """A uint8 (B, 3, h, w) batch; anything else is a programming error."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 (B, 3, h, w) batch, got {images.dtype} {tuple(images.shape)}")

