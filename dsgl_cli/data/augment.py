"""The train augmentation of method.md 3, drawn from keyed random streams, and its per-image path.

Every random choice for one image comes from a counter-based stream keyed by
``(seed, epoch, iteration, position_in_global_batch, role)`` (role 0 = anchor, 1 = L_kl
partner), so what an image gets never depends on DataLoader workers, process counts or the
order in which images are processed. The stream is NumPy's Philox4x64-10 with
``key = (seed, epoch)`` and ``counter = (block, iteration, position, role)``: a per-image draw
uses NumPy's own generator, a batch draw evaluates the same Philox blocks for all keys at once
in vectorised integer arithmetic (counter-based streams allow random access to any block).

Uniform ``i`` of an image's stream has a fixed meaning (what NumPy's ``Generator.random``
returns for its ``i``-th call): 0 flip, 1 crop top, 2 crop left, 3 erasing gate, 4 box top,
5 box left, then ``6 + 2a`` and ``7 + 2a`` the area and aspect ratio of erasing attempt ``a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from dsgl_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD

ROLE_ANCHOR = 0
ROLE_PARTNER = 1
FLIP_P = 0.5
ERASE_P = 0.5
ERASE_AREA = (0.02, 0.4)
ERASE_RATIO = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100
ERASE_FILL = IMAGENET_MEAN          # the reference writes the raw mean after normalisation
_HEAD = 6                           # flip, crop top, crop left, gate, box top, box left
STREAM_LENGTH = _HEAD + 2 * ERASE_ATTEMPTS

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_PHILOX_M = (_U64(0xD2E7470EE14C6C93), _U64(0xCA5A826395121157))
_PHILOX_W = (_U64(0x9E3779B97F4A7C15), _U64(0xBB67AE8584CAA73B))
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53, as NumPy turns 53 random bits into a double


class AugmentKey(NamedTuple):
    """Where one image sits in the run; every field a non-negative integer below 2**64."""

    seed: int
    epoch: int
    iteration: int
    position: int      # position in the *global* batch (rank * local_batch + local index)
    role: int          # ROLE_ANCHOR or ROLE_PARTNER


class EraseBox(NamedTuple):
    """The erased rectangle in the H x W output (rows top..top+height-1)."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of the train transform for one image (method.md 3)."""

    flip: bool
    crop_top: int                 # offsets into the zero-padded image, 0..2*pad inclusive
    crop_left: int
    erase: Optional[EraseBox]     # None: the image is not erased


@dataclass(frozen=True)
class BatchParams:
    """The same choices for a batch, as arrays (row ``i`` = image ``i``); boxes 0 where none."""

    flip: np.ndarray          # bool (B,)
    crop_top: np.ndarray      # int64 (B,)
    crop_left: np.ndarray
    erase: np.ndarray         # bool (B,)
    box: np.ndarray           # int64 (B, 4): top, left, height, width

    def __len__(self) -> int:
        return len(self.flip)

    def image(self, i: int) -> AugmentParams:
        """Image ``i``'s parameters, for the per-image path."""
        box = EraseBox(*(int(v) for v in self.box[i])) if self.erase[i] else None
        return AugmentParams(bool(self.flip[i]), int(self.crop_top[i]), int(self.crop_left[i]), box)

    @classmethod
    def stack(cls, params: Sequence[AugmentParams]) -> "BatchParams":
        """Per-image parameters gathered into one batch."""
        box = np.array([p.erase if p.erase is not None else (0, 0, 0, 0) for p in params],
                       dtype=np.int64).reshape(-1, 4)
        return cls(np.array([p.flip for p in params], dtype=bool),
                   np.array([p.crop_top for p in params], dtype=np.int64),
                   np.array([p.crop_left for p in params], dtype=np.int64),
                   np.array([p.erase is not None for p in params], dtype=bool), box)


def train_padding(height: int) -> int:
    """Zero padding on every side: 10 px at a height of 256, scaled with it (at least 1)."""
    return max(1, round(10 * height / 256))


def batch_keys(seed: int, epoch: int, iteration: int, positions: Union[Sequence[int], np.ndarray],
               role: int) -> np.ndarray:
    """Keys (B x 5) of the images at ``positions`` of one global batch."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    keys = np.empty((len(positions), 5), dtype=np.int64)
    keys[:] = (seed, epoch, iteration, 0, role)
    keys[:, 3] = positions
    return _check_keys(keys)


def _check_keys(keys: Union[Sequence[Sequence[int]], np.ndarray]) -> np.ndarray:
    """Keys as a (K, 5) uint64 array; negative or oversized fields are refused, not wrapped."""
    arr = np.asarray(keys)
    if arr.dtype.kind in "iu":                       # the fast path: an integer array
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError("augmentation keys need integers in [0, 2**64)")
        return arr.astype(np.uint64).reshape(-1, 5)
    as_int = [[int(v) for v in k] for k in np.asarray(keys, dtype=object).reshape(-1, 5)]
    if any(v < 0 or v >= 2**64 for k in as_int for v in k):
        raise ValueError("augmentation keys need integers in [0, 2**64)")
    return np.array(as_int, dtype=np.uint64).reshape(-1, 5)


# ---- the stream: NumPy's Philox4x64-10, per image and vectorised -------------------------

def key_generator(key: Union[AugmentKey, Sequence[int]]) -> np.random.Generator:
    """NumPy's generator for one image's stream (its i-th ``random()`` is uniform i)."""
    seed, epoch, iteration, position, role = (int(v) for v in _check_keys([key])[0])
    bits = np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64),
                            counter=np.array([0, iteration, position, role], dtype=np.uint64))
    return np.random.Generator(bits)


def _mulhilo(a: np.ndarray, m: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64-bit words of a * m, from 32-bit halves (NumPy has no 128-bit product)."""
    a_lo, a_hi = a & _M32, a >> _U64(32)
    m_lo, m_hi = m & _M32, m >> _U64(32)
    lo_lo, hi_lo, lo_hi = a_lo * m_lo, a_hi * m_lo, a_lo * m_hi
    cross = (lo_lo >> _U64(32)) + (hi_lo & _M32) + lo_hi           # < 2**64 by construction
    hi = a_hi * m_hi + (hi_lo >> _U64(32)) + (cross >> _U64(32))
    return hi, a * m


def _philox_blocks(keys: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The four raw 64-bit outputs of counter word ``block`` for each key row: (K, 4) uint64."""
    c0, c1, c2, c3 = block.astype(np.uint64), keys[:, 2].copy(), keys[:, 3].copy(), keys[:, 4].copy()
    k0, k1 = keys[:, 0].copy(), keys[:, 1].copy()
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0, k1 = k0 + _PHILOX_W[0], k1 + _PHILOX_W[1]
            hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
            hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=1)


def stream_uniforms(keys: np.ndarray, start: int, count: int) -> np.ndarray:
    """Uniforms ``start .. start+count-1`` of every key's stream: (K, count) float64.

    Uniform i is word i % 4 of counter block i // 4 + 1 (NumPy's Philox bumps its counter
    before the first block), turned into a double as NumPy does: (bits >> 11) * 2**-53.
    All blocks of all keys go through one vectorised Philox evaluation.
    """
    first, last = start // 4, (start + count - 1) // 4
    blocks = np.arange(first + 1, last + 2, dtype=np.uint64)
    rows = _philox_blocks(np.repeat(keys, len(blocks), axis=0), np.tile(blocks, len(keys)))
    bits = rows.reshape(len(keys), -1)[:, start - 4 * first: start - 4 * first + count]
    return (bits >> _U64(11)).astype(np.float64) * _TO_UNIT


# ---- method.md 3: the draws ---------------------------------------------------------------

def _below(u: float, n: int) -> int:
    """A uniform integer in [0, n) from a uniform double (the clamp guards u*n rounding to n)."""
    return min(int(u * n), n - 1)


def _box_size(u_area: float, u_ratio: float, height: int, width: int) -> tuple[int, int]:
    """One erasing attempt's (h, w): Python's uniform ``a + (b-a)*u``, round halves to even."""
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u_area) * (height * width)
    ratio = ERASE_RATIO[0] + (ERASE_RATIO[1] - ERASE_RATIO[0]) * u_ratio
    return int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))


def draw_params(key: Union[AugmentKey, Sequence[int]], height: int, width: int) -> AugmentParams:
    """One image's parameters at the training size (method.md 3), attempt by attempt."""
    rng = key_generator(key)
    u = rng.random(_HEAD)
    n = 2 * train_padding(height) + 1
    erase = None
    if u[3] < ERASE_P:
        for _ in range(ERASE_ATTEMPTS):
            u_area, u_ratio = rng.random(2)
            h, w = _box_size(u_area, u_ratio, height, width)
            if w < width and h < height:
                erase = EraseBox(_below(u[4], height - h + 1), _below(u[5], width - w + 1), h, w)
                break
    return AugmentParams(bool(u[0] < FLIP_P), _below(u[1], n), _below(u[2], n), erase)


def _below_array(u: np.ndarray, n: np.ndarray | np.integer | int) -> np.ndarray:
    return np.minimum((u * n).astype(np.int64), n - 1)


def draw_batch_params(keys: Union[Sequence[Sequence[int]], np.ndarray], height: int, width: int,
                      chunk: int = 8) -> BatchParams:
    """Parameters for many keys at once; equal to ``draw_params`` key by key.

    The head and the first 5 erasing attempts take 4 Philox blocks per key; further attempts
    are evaluated ``chunk`` at a time, only for images still without a fitting box (at 256x128
    the first attempt always fits: h <= 209 < 256 and w <= 115 < 128).
    """
    keys = _check_keys(keys)
    if not len(keys):
        empty = np.zeros(0, dtype=np.int64)
        return BatchParams(empty.astype(bool), empty, empty, empty.astype(bool), np.zeros((0, 4), np.int64))
    first_attempts = 5
    u = stream_uniforms(keys, 0, _HEAD + 2 * first_attempts)
    n = np.int64(2 * train_padding(height) + 1)
    size = np.zeros((len(keys), 2), dtype=np.int64)
    found = np.zeros(len(keys), dtype=bool)
    pending = np.flatnonzero(u[:, 3] < ERASE_P)
    ua = u[pending, _HEAD:]
    attempt = 0
    while len(pending):
        area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * ua[:, 0::2]) * (height * width)
        ratio = ERASE_RATIO[0] + (ERASE_RATIO[1] - ERASE_RATIO[0]) * ua[:, 1::2]
        h = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        w = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (w < width) & (h < height)
        hit = fits.any(axis=1)
        first = fits.argmax(axis=1)[hit]
        rows = pending[hit]
        size[rows, 0], size[rows, 1] = h[hit, first], w[hit, first]
        found[rows] = True
        pending = pending[~hit]
        attempt += fits.shape[1]
        if attempt >= ERASE_ATTEMPTS or not len(pending):
            break
        count = min(chunk, ERASE_ATTEMPTS - attempt)
        ua = stream_uniforms(keys[pending], _HEAD + 2 * attempt, 2 * count)
    box = np.zeros((len(keys), 4), dtype=np.int64)
    box[found, 0] = _below_array(u[found, 4], height - size[found, 0] + 1)
    box[found, 1] = _below_array(u[found, 5], width - size[found, 1] + 1)
    box[found, 2:] = size[found]
    return BatchParams(u[:, 0] < FLIP_P, _below_array(u[:, 1], n), _below_array(u[:, 2], n),
                       found, box)


# ---- the per-image (PIL) path --------------------------------------------------------------

_MEAN_STD: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def normalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (..., 3, H, W) floats in [0, 1], as torchvision's Normalize.

    The constants are made once per device and dtype: made per batch they were two host-to-device
    copies in every training step on the device path.
    """
    key = (str(x.device), x.dtype)
    if key not in _MEAN_STD:
        _MEAN_STD[key] = (torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1),
                          torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1))
    mean, std = _MEAN_STD[key]
    return (x - mean) / std


def uint8_to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> normalised float32: /255 then normalise (ToTensor + Normalize)."""
    return normalise(x.to(torch.float32).div(255))


class PilTrainAugment:
    """The train transform of method.md 3 for one PIL image and its drawn parameters.

    Picklable (plain attributes), so DataLoader workers can hold it. Resize (PIL bicubic),
    flip, zero padding, crop, /255, ImageNet normalisation, then the reference's erasing.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width
        self.pad = train_padding(height)

    def __call__(self, img: Image.Image, params: AugmentParams) -> torch.Tensor:
        img = img.convert("RGB").resize((self.width, self.height), Image.Resampling.BICUBIC)
        if params.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = self.pad
        padded = np.pad(np.asarray(img), ((p, p), (p, p), (0, 0)))
        crop = padded[params.crop_top: params.crop_top + self.height,
                      params.crop_left: params.crop_left + self.width]
        out = uint8_to_input(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1))
        if params.erase is not None:
            top, left, h, w = params.erase
            fill = torch.tensor(ERASE_FILL, dtype=out.dtype).view(3, 1, 1)
            out[:, top: top + h, left: left + w] = fill
        return out


class KeyedTrainAugment:
    """Draws an image's parameters from its key and applies the PIL path (picklable)."""

    def __init__(self, height: int, width: int, seed: int) -> None:
        self.seed = seed
        self.augment = PilTrainAugment(height, width)

    def __call__(self, img: Image.Image, epoch: int, iteration: int, position: int,
                 role: int) -> torch.Tensor:
        key = AugmentKey(self.seed, epoch, iteration, position, role)
        return self.augment(img, draw_params(key, self.augment.height, self.augment.width))
