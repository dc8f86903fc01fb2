"""Built-in synthetic demo data set: rendered people in the Market-1501 layout and naming.

Why: `dsgl train -d demo` must show the whole unsupervised pipeline (method.md sections 1 and
4-6) learning something on a laptop CPU in minutes, with no download.  Identity is carried by
clothing colours, a coarse clothing pattern, body shape and accessories (cues that survive a
64x32 downscale); every camera adds its own moderate style (colour cast, exposure, background,
blur, framing, preferred viewpoint), so a randomly initialised network first groups images by
camera and has to learn to group them by person.  Every image is drawn from its own NumPy
generator seeded by (seed, split, file name), so the bytes depend only on the seed and the
configuration, never on the order or parallelism of generation.
"""

from __future__ import annotations

import colorsys
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from dsgl_cli.errors import DsglError

MARKER_NAME = ".dsgl-demo.json"
PARTIAL_NAME = ".dsgl-demo.partial"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
SPLITS = ("bounding_box_train", "bounding_box_test", "query")
DISTRACTOR_ID = 0
JUNK_ID = -1

# Clothing palettes (RGB 0-255): wide spread in hue and lightness so that colour blocks stay
# distinguishable after the camera's cast and a 64x32 downscale.
_UPPER_PALETTE = np.array(
    [
        (200, 30, 35), (120, 20, 30), (235, 120, 30), (235, 205, 45), (60, 150, 60),
        (25, 80, 40), (30, 140, 150), (110, 170, 225), (35, 70, 175), (25, 30, 70),
        (120, 55, 150), (230, 120, 170), (115, 70, 40), (215, 195, 150), (240, 240, 235),
        (160, 160, 160), (70, 70, 75), (20, 20, 22),
    ],
    dtype=np.float32,
) / 255.0
_LOWER_PALETTE = np.array(
    [
        (40, 60, 110), (90, 120, 170), (20, 20, 24), (95, 95, 100), (185, 160, 115),
        (100, 70, 45), (25, 30, 60), (230, 230, 225), (150, 35, 40), (60, 90, 50),
    ],
    dtype=np.float32,
) / 255.0
_SKIN = np.array([(240, 200, 170), (220, 170, 130), (175, 120, 85), (110, 70, 50)], np.float32) / 255.0
_HAIR = np.array([(25, 20, 18), (70, 45, 25), (150, 110, 60), (200, 170, 110), (120, 120, 120)], np.float32) / 255.0
_SHOES = np.array([(20, 20, 20), (235, 235, 235), (100, 70, 45), (60, 60, 80)], np.float32) / 255.0
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
VIEWS = ("front", "back", "side")
BACKGROUNDS = ("wall_floor", "stripes", "noise", "gradient")


@dataclass(frozen=True)
class Identity:
    """What makes one person recognisable in every camera."""

    upper: np.ndarray
    lower: np.ndarray
    pattern: str
    pattern_color: np.ndarray
    stripes: int
    long_sleeves: bool
    lower_style: str  # trousers | shorts | skirt
    skin: np.ndarray
    hair: np.ndarray
    shoes: np.ndarray
    height_ratio: float
    build: float
    hat: Optional[np.ndarray]
    bag: str  # none | backpack | handbag
    bag_color: np.ndarray
    stride_bias: float


@dataclass(frozen=True)
class CameraStyle:
    """One camera's look: colour cast, exposure, background, blur, framing and viewpoint."""

    index: int  # 1-based, as in the file names
    gains: np.ndarray
    brightness: float
    contrast: float
    saturation: float
    blur: float
    noise: float
    scale: float
    ground: float
    aspect: float
    view_probs: np.ndarray
    background: str
    bg_colors: np.ndarray
    bg_param: float


@dataclass(frozen=True)
class ImageSpec:
    """One file to write: where, who, which camera, and how to seed its generator."""

    split: str
    pid: int
    cam: int
    name: str
    kind: str  # person | distractor | junk


@dataclass
class DemoPlan:
    """The full list of files for one configuration, computed without rendering anything."""

    seed: int
    height: int
    width: int
    num_train_ids: int
    num_test_ids: int
    num_cameras: int
    images: list[ImageSpec] = field(default_factory=list)
    identities: dict[int, Identity] = field(default_factory=dict)
    cameras: dict[int, CameraStyle] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Files per split folder."""
        out = {s: 0 for s in SPLITS}
        for spec in self.images:
            out[spec.split] += 1
        return out


@dataclass(frozen=True)
class DemoSummary:
    """What `generate_demo` wrote (counts are files per folder, distractors and junk included)."""

    root: Path
    counts: dict[str, int]
    num_train_ids: int
    num_test_ids: int
    num_cameras: int
    num_distractors: int
    num_junk: int
    seed: int
    height: int
    width: int
    seconds: float

    @property
    def num_images(self) -> int:
        """All files written."""
        return sum(self.counts.values())


# ----------------------------------------------------------------------------- validation


def _validate(seed: int, num_train_ids: int, num_test_ids: int, num_cameras: int, height: int, width: int) -> None:
    """Reject configurations the Market naming or the renderer cannot express."""
    if seed < 0:
        raise DsglError(f"demo seed must be >= 0, got {seed}", exit_code=2)
    if num_train_ids < 2 or num_test_ids < 1:
        raise DsglError(
            f"demo needs >= 2 train ids and >= 1 test id, got {num_train_ids} and {num_test_ids}", exit_code=2
        )
    if num_train_ids + num_test_ids > 9999:
        raise DsglError("demo ids are written with 4 digits: keep train + test ids <= 9999", exit_code=2)
    if not 2 <= num_cameras <= 9:
        raise DsglError(f"demo cameras must be 2..9 (one digit after '_c'), got {num_cameras}", exit_code=2)
    if not (32 <= height <= 128 and 16 <= width <= 64):
        raise DsglError(
            f"demo image size must be within 32..128 x 16..64 (H x W), got {height}x{width}", exit_code=2
        )


# ----------------------------------------------------------------------------- planning


def _rng(*keys: int) -> np.random.Generator:
    """A generator that depends only on the given non-negative integer keys."""
    return np.random.default_rng([int(k) for k in keys])


def _jitter_color(rng: np.random.Generator, base: np.ndarray, amount: float = 0.04) -> np.ndarray:
    return np.clip(base + rng.uniform(-amount, amount, 3), 0.0, 1.0).astype(np.float32)


def _make_identity(rng: np.random.Generator, upper_idx: int, lower_idx: int) -> Identity:
    """Draw one person's clothing, shape and accessories."""
    upper = _jitter_color(rng, _UPPER_PALETTE[upper_idx])
    lower = _jitter_color(rng, _LOWER_PALETTE[lower_idx])
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.32, 0.2, 0.16, 0.14, 0.18]))]
    # The pattern's second colour contrasts in lightness with the garment, so it survives blur.
    lum = float(upper @ np.array([0.3, 0.59, 0.11], np.float32))
    candidates = [i for i, c in enumerate(_UPPER_PALETTE) if abs(float(c @ np.array([0.3, 0.59, 0.11])) - lum) > 0.3]
    pattern_color = _jitter_color(rng, _UPPER_PALETTE[int(rng.choice(candidates))])
    lower_style = ("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
    return Identity(
        upper=upper,
        lower=lower,
        pattern=pattern,
        pattern_color=pattern_color,
        stripes=int(rng.integers(3, 6)),
        long_sleeves=bool(rng.random() < 0.6),
        lower_style=lower_style,
        skin=_jitter_color(rng, _SKIN[int(rng.integers(len(_SKIN)))], 0.03),
        hair=_jitter_color(rng, _HAIR[int(rng.integers(len(_HAIR)))], 0.03),
        shoes=_jitter_color(rng, _SHOES[int(rng.integers(len(_SHOES)))], 0.03),
        height_ratio=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.82, 1.22)),
        hat=_jitter_color(rng, _UPPER_PALETTE[int(rng.integers(len(_UPPER_PALETTE)))]) if rng.random() < 0.2 else None,
        bag=("none", "backpack", "handbag")[int(rng.choice(3, p=[0.6, 0.25, 0.15]))],
        bag_color=_jitter_color(rng, _UPPER_PALETTE[int(rng.integers(len(_UPPER_PALETTE)))]),
        stride_bias=float(rng.uniform(-0.01, 0.02)),
    )


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def _make_camera(seed: int, index: int, num_cameras: int) -> CameraStyle:
    """Draw one camera's style; hues of cast and background are spread around the circle."""
    rng = _rng(seed, 2, index)
    theta = 2 * np.pi * ((index - 1) / num_cameras + rng.uniform(-0.06, 0.06))
    magnitude = rng.uniform(0.07, 0.13)
    gains = 1.0 + magnitude * np.cos(theta - np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))
    hue = (index - 1) / num_cameras + 0.37 + rng.uniform(-0.07, 0.07)
    sat = rng.uniform(0.12, 0.4)
    val = rng.uniform(0.4, 0.7)
    bg_colors = np.stack(
        [
            _hsv(hue, sat, val),
            _hsv(hue + rng.uniform(-0.12, 0.12), sat * rng.uniform(0.6, 1.3), val + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)),
            _hsv(hue + 0.5, rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.8)),
        ]
    )
    preferred = int(rng.integers(len(VIEWS)))
    view_probs = np.full(len(VIEWS), 0.15, np.float64)
    view_probs[preferred] = 0.7
    return CameraStyle(
        index=index,
        gains=gains.astype(np.float32),
        brightness=float(rng.uniform(-0.08, 0.07)),
        contrast=float(rng.uniform(0.78, 1.1)),
        saturation=float(rng.uniform(0.75, 1.1)),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(0.008, 0.03)),
        scale=float(rng.uniform(0.82, 0.94)),
        ground=float(rng.uniform(0.95, 0.99)),
        aspect=float(rng.uniform(0.9, 1.1)),
        view_probs=view_probs / view_probs.sum(),
        background=BACKGROUNDS[int(_rng(seed, 6).permutation(len(BACKGROUNDS))[(index - 1) % len(BACKGROUNDS)])],
        bg_colors=bg_colors,
        bg_param=float(rng.uniform(0.55, 0.8)),
    )


def _choose_cameras(rng: np.random.Generator, num_cameras: int) -> np.ndarray:
    """Pick the 2..num_cameras cameras (sorted, 1-based) that see one person."""
    top = min(num_cameras, 4)
    k = int(rng.integers(2, top + 1))
    return np.sort(rng.choice(num_cameras, size=k, replace=False)) + 1


def _identity_table(seed: int, num_ids: int) -> dict[int, Identity]:
    """Identities 1..num_ids; the (upper, lower) colour pair is dealt without repetition first."""
    pairs = _rng(seed, 1).permutation(len(_UPPER_PALETTE) * len(_LOWER_PALETTE))
    table = {}
    for pid in range(1, num_ids + 1):
        pair = int(pairs[(pid - 1) % len(pairs)])
        table[pid] = _make_identity(_rng(seed, 3, pid), pair // len(_LOWER_PALETTE), pair % len(_LOWER_PALETTE))
    return table


def plan_demo(
    seed: int = 0,
    num_train_ids: int = 80,
    num_test_ids: int = 50,
    num_cameras: int = 4,
    height: int = 128,
    width: int = 64,
) -> DemoPlan:
    """List every file of the demo set (split, id, camera, name) without rendering anything."""
    _validate(seed, num_train_ids, num_test_ids, num_cameras, height, width)
    rng = _rng(seed, 0)
    raw: list[tuple[str, int, int, str]] = []  # split, pid, cam, kind
    for pid in range(1, num_train_ids + 1):
        cams = _choose_cameras(rng, num_cameras)
        n = int(rng.integers(8, 15))
        seen = np.concatenate([cams, rng.choice(cams, size=n - len(cams))])
        raw += [("bounding_box_train", pid, int(c), "person") for c in np.sort(seen)]
    for pid in range(num_train_ids + 1, num_train_ids + num_test_ids + 1):
        for c in _choose_cameras(rng, num_cameras):
            raw.append(("query", pid, int(c), "person"))
            raw += [("bounding_box_test", pid, int(c), "person")] * int(rng.integers(2, 4))
    for _ in range(max(3, num_test_ids // 3)):
        raw.append(("bounding_box_test", DISTRACTOR_ID, int(rng.integers(1, num_cameras + 1)), "distractor"))
    for _ in range(max(2, num_test_ids // 6)):
        raw.append(("bounding_box_test", JUNK_ID, int(rng.integers(1, num_cameras + 1)), "junk"))

    # Frame numbers run per camera so names are unique; the sequence digit follows the frame.
    per_cam = {c: sum(1 for r in raw if r[2] == c) for c in range(1, num_cameras + 1)}
    counter = {c: 0 for c in range(1, num_cameras + 1)}
    plan = DemoPlan(seed, height, width, num_train_ids, num_test_ids, num_cameras)
    for split, pid, cam, kind in raw:
        k = counter[cam]
        counter[cam] += 1
        seq = 1 + (6 * k) // per_cam[cam]
        step = max(1, min(25, 999_999 // per_cam[cam]))  # frames stay 6 digits and distinct
        frame = step * k + 1 + int(rng.integers(0, step))
        box = int(rng.integers(1, 8))
        pid_txt = "-1" if pid == JUNK_ID else f"{pid:04d}"
        name = f"{pid_txt}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"
        plan.images.append(ImageSpec(split, pid, cam, name, kind))
    plan.identities = _identity_table(seed, num_train_ids + num_test_ids)
    plan.cameras = {c: _make_camera(seed, c, num_cameras) for c in range(1, num_cameras + 1)}
    return plan


# ----------------------------------------------------------------------------- rendering


class _Canvas:
    """An H x W x 3 float image plus the pixel grid, with soft-edged shape painting."""

    def __init__(self, background: np.ndarray) -> None:
        self.img = background.astype(np.float32, copy=True)
        h, w = background.shape[:2]
        self.y, self.x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.shade = np.ones((h, w), np.float32)

    def paint(self, coverage: np.ndarray, color: np.ndarray) -> None:
        """Blend a colour (3,) or field (H, W, 3) where coverage (H, W) in [0, 1] says so."""
        rows = np.flatnonzero(coverage.any(axis=1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(coverage.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # blend only where drawn
        a = coverage[box][..., None]
        col = color * self.shade[box][..., None] if color.ndim == 1 else color[box]
        self.img[box] = self.img[box] * (1.0 - a) + col * a

    @staticmethod
    def _cover(distance: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - distance, 0.0, 1.0)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        r = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return self._cover((r - 1.0) * min(rx, ry))

    def capsule(self, ax: float, ay: float, bx: float, by: float, radius: float) -> np.ndarray:
        dx, dy = bx - ax, by - ay
        t = np.clip(((self.x - ax) * dx + (self.y - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        dist = np.hypot(self.x - (ax + t * dx), self.y - (ay + t * dy))
        return self._cover(dist - max(radius, 0.5))

    def trapezoid(self, cx: float, y0: float, y1: float, hw0: float, hw1: float) -> np.ndarray:
        t = np.clip((self.y - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
        half = hw0 + (hw1 - hw0) * t
        d = np.maximum(np.abs(self.x - cx) - half, np.maximum(y0 - self.y, self.y - y1))
        return self._cover(d)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        d = np.maximum(np.maximum(x0 - self.x, self.x - x1), np.maximum(y0 - self.y, self.y - y1))
        return self._cover(d)


@lru_cache(maxsize=64)
def _camera_backdrop(seed: int, index: int, num_cameras: int, height: int, width: int) -> np.ndarray:
    """A camera's background texture, wider and taller than one image; images crop it."""
    cam = _make_camera(seed, index, num_cameras)
    rng = _rng(seed, 4, index)
    h, w = height + height // 4, width * 2
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    c0, c1, c2 = cam.bg_colors
    if cam.background == "wall_floor":
        floor = (y > cam.bg_param)[..., None].astype(np.float32)
        img = c0 * (1 - floor) + c1 * floor
        tiles = ((np.floor(x * 7 + 3 * y) + np.floor(y * 14)) % 2)[..., None] * floor
        img = img * (1 - 0.06 * tiles)
    elif cam.background == "stripes":
        edges = np.cumsum(rng.uniform(0.08, 0.25, 12))
        band = np.searchsorted(edges / edges[-1], x) % 3
        img = np.stack([c0, c1, c2])[np.broadcast_to(band, (h, w))]
        img = img * (1 - 0.1 * (y > cam.bg_param)[..., None])
    elif cam.background == "noise":
        noise = gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), sigma=max(2.0, width / 16))
        noise = (noise / (np.abs(noise).max() + 1e-6))[..., None]
        img = c0 + (c1 - c0) * (0.5 + 0.5 * noise)
    else:  # gradient with brick-like lines
        img = c0 * (1 - y[..., None]) + c1 * y[..., None]
        bricks = ((np.floor(y * 16) % 2) * 0.5 + x * 6) % 1.0 < 0.06
        lines = (np.abs((y * 16) % 1.0 - 0.5) > 0.44) | bricks
        img = img * (1 - 0.08 * lines[..., None])
    return np.ascontiguousarray(np.broadcast_to(np.clip(img, 0.0, 1.0), (h, w, 3)), dtype=np.float32)


def _render_person(cv: _Canvas, who: Identity, rng: np.random.Generator, cam: CameraStyle, view: str,
                   cx: float, feet: float, ph: float) -> None:
    """Paint one person (legs, shoes, torso with pattern, bag, arms, head, hair, hat)."""
    top = feet - ph
    Y = lambda f: top + f * ph  # noqa: E731 - fraction of body height to pixel row
    side = view == "side"
    sw = 0.15 * ph * who.build * cam.aspect * (0.68 if side else 1.0)  # shoulder half-width
    flip = -1.0 if rng.random() < 0.5 else 1.0
    stride = (rng.uniform(-0.03, 0.09) + who.stride_bias) * ph
    swing = rng.uniform(-0.3, 0.3)
    # Rounded-body shading: darker towards the silhouette's sides, lighter towards the top.
    u = np.clip((cv.x - cx) / (1.3 * sw + 1e-6), -1.0, 1.0)
    cv.shade = (1.0 - 0.2 * u**2) * (1.05 - 0.1 * np.clip((cv.y - top) / ph, 0.0, 1.0))

    # Legs and shoes.
    hip_y, knee_y, foot_y = Y(0.52), Y(0.72), Y(0.965)
    leg_r = 0.043 * ph * who.build ** 0.5
    hip_dx = 0.0 if side else 0.055 * ph * who.build
    legs = []
    for s in (-1.0, 1.0):  # side views show the stride, front/back views a little spread
        fx = cx + s * (stride * 1.3 if side else hip_dx + 0.3 * abs(stride))
        legs.append(cv.capsule(cx + s * hip_dx, hip_y, fx, foot_y - leg_r * 0.5, leg_r))
        cv.paint(cv.ellipse(fx + flip * 0.02 * ph, foot_y, 0.045 * ph, 0.022 * ph), who.shoes)
    leg_cov = np.maximum(legs[0], legs[1])
    if who.lower_style == "trousers":
        cv.paint(leg_cov * (cv.y < Y(0.94)), who.lower)
        cv.paint(leg_cov * (cv.y >= Y(0.94)), who.skin * 0.6)
    else:
        cv.paint(leg_cov * (cv.y >= knee_y), who.skin)
        if who.lower_style == "shorts":
            cv.paint(leg_cov * (cv.y < knee_y), who.lower)
    cv.paint(cv.trapezoid(cx, hip_y - 0.03 * ph, hip_y + 0.04 * ph, 0.85 * sw, 0.85 * sw), who.lower)
    if who.lower_style == "skirt":
        cv.paint(cv.trapezoid(cx, hip_y - 0.02 * ph, Y(0.74), 0.85 * sw, 1.15 * sw), who.lower)

    # Back arm for side views goes behind the torso.
    shoulder_y = Y(0.185)
    arm_len = 0.34 * ph
    arm_r = 0.032 * ph * who.build ** 0.5

    def arm(sx: float, angle: float) -> None:
        hx, hy = sx + np.sin(angle) * arm_len, shoulder_y + np.cos(angle) * arm_len
        full = cv.capsule(sx, shoulder_y, hx, hy, arm_r)
        if who.long_sleeves:
            cv.paint(full, who.upper)
        else:
            ex, ey = sx + 0.45 * (hx - sx), shoulder_y + 0.45 * (hy - shoulder_y)
            cv.paint(full, who.skin)
            cv.paint(cv.capsule(sx, shoulder_y, ex, ey, arm_r * 1.1), who.upper)
        cv.paint(cv.ellipse(hx, hy, arm_r * 1.05, arm_r * 1.2), who.skin)

    if side:
        arm(cx, -swing)

    # Torso with the identity's pattern.
    t0, t1 = Y(0.15), Y(0.535)
    torso = np.maximum(cv.trapezoid(cx, t0 + 0.02 * ph, t1, sw, 0.88 * sw),
                       cv.capsule(cx - sw + 0.04 * ph, t0 + 0.04 * ph, cx + sw - 0.04 * ph, t0 + 0.04 * ph, 0.04 * ph))
    tu = (cv.x - cx) / max(sw, 1.0)
    tv = (cv.y - t0) / max(t1 - t0, 1.0)
    n = who.stripes
    if who.pattern == "hstripes":
        second = (np.floor(tv * (n + 0.5)) % 2) == 1
    elif who.pattern == "vstripes":
        second = (np.floor((tu + 1.0) * 0.5 * (n + 0.5)) % 2) == 1
    elif who.pattern == "checks":
        second = ((np.floor(tv * 4) + np.floor((tu + 1.0) * 2)) % 2) == 1
    elif who.pattern == "logo" and view == "front":
        second = (np.abs(tu) < 0.42) & (np.abs(tv - 0.38) < 0.2)
    else:
        second = np.zeros_like(tu, dtype=bool)
    field = np.where(second[..., None], who.pattern_color, who.upper) * cv.shade[..., None]
    cv.paint(torso, field.astype(np.float32))

    # Bag.
    if who.bag == "backpack":
        if view == "back":
            cv.paint(cv.box(cx - 0.72 * sw, cx + 0.72 * sw, Y(0.2), Y(0.46)), who.bag_color)
        elif view == "side":
            bx = cx - flip * (sw + 0.045 * ph)
            cv.paint(cv.box(bx - 0.05 * ph, bx + 0.05 * ph, Y(0.19), Y(0.45)), who.bag_color)
        else:
            for s in (-0.55, 0.55):
                cv.paint(cv.box(cx + s * sw - 0.012 * ph, cx + s * sw + 0.012 * ph, t0, Y(0.42)), who.bag_color)

    # Arms (front/back views) and head.
    if not side:
        for s in (-1.0, 1.0):
            arm(cx + s * (sw - 0.02 * ph), s * (0.1 + 0.05 * who.build) + swing * (s * 0.5))
    else:
        arm(cx, swing)
    cv.paint(cv.box(cx - 0.025 * ph, cx + 0.025 * ph, Y(0.115), Y(0.17)), who.skin)
    hx, hy, hrx, hry = cx + (flip * 0.015 * ph if side else 0.0), Y(0.075), 0.052 * ph, 0.068 * ph
    head = cv.ellipse(hx, hy, hrx, hry)
    cv.paint(head, who.skin)
    if view == "back":
        cv.paint(head, who.hair)
    else:
        cv.paint(head * (cv.y < hy - 0.25 * hry), who.hair)
        if side:
            cv.paint(head * ((cv.x - hx) * flip < -0.2 * hrx), who.hair)
    if who.hat is not None:
        cv.paint(cv.ellipse(hx, hy - 0.55 * hry, hrx * 1.15, hry * 0.55), who.hat)
    if who.bag == "handbag":
        bx = cx + flip * (sw + 0.05 * ph)
        cv.paint(cv.capsule(cx + flip * 0.6 * sw, t0 + 0.02 * ph, bx, Y(0.46), 0.008 * ph), who.bag_color * 0.7)
        cv.paint(cv.box(bx - 0.05 * ph, bx + 0.05 * ph, Y(0.45), Y(0.58)), who.bag_color)
    cv.shade = np.ones_like(cv.shade)


def render_image(plan: DemoPlan, spec: ImageSpec) -> np.ndarray:
    """Render one planned image as uint8 H x W x 3, independent of every other image.

    Its generator is seeded by (seed, split, file name) only, so images may be rendered in any
    order or in parallel and still come out the same.
    """
    height, width = plan.height, plan.width
    cam = plan.cameras[spec.cam]
    who = plan.identities[spec.pid] if spec.kind == "person" else None
    rng = _rng(plan.seed, 5, SPLITS.index(spec.split), zlib.crc32(spec.name.encode()))
    backdrop = _camera_backdrop(plan.seed, cam.index, plan.num_cameras, height, width)
    oy = int(rng.integers(0, backdrop.shape[0] - height + 1))
    ox = int(rng.integers(0, backdrop.shape[1] - width + 1))
    cv = _Canvas(backdrop[oy:oy + height, ox:ox + width])
    # Background clutter: a sign, a door, a passer-by's colour block.
    for _ in range(int(rng.integers(0, 2))):
        x0, y0 = rng.uniform(-0.2, 0.9) * width, rng.uniform(-0.1, 0.7) * height
        cv.paint(cv.box(x0, x0 + rng.uniform(0.1, 0.35) * width, y0, y0 + rng.uniform(0.1, 0.4) * height) * 0.8,
                 _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.8)))

    if who is None:  # distractor: an unrelated person, badly framed
        who = _make_identity(rng, int(rng.integers(len(_UPPER_PALETTE))), int(rng.integers(len(_LOWER_PALETTE))))
    view = VIEWS[int(rng.choice(len(VIEWS), p=cam.view_probs))]
    ph = cam.scale * height * who.height_ratio * rng.uniform(0.92, 1.08)
    cx = width * 0.5 + rng.uniform(-0.08, 0.08) * width
    feet = cam.ground * height + rng.uniform(-0.04, 0.03) * height
    if spec.kind == "distractor":
        ph *= rng.uniform(1.1, 1.6)
        cx += rng.choice([-1, 1]) * rng.uniform(0.1, 0.3) * width
        feet += rng.uniform(0.0, 0.4) * height
    if spec.kind == "junk":  # mostly background with a sliver of somebody at the border
        cx = rng.choice([-0.25, 1.25]) * width
        feet += rng.uniform(-0.2, 0.3) * height
    _render_person(cv, who, rng, cam, view, cx, feet, ph)

    if spec.kind == "person" and rng.random() < 0.1:  # occlusion by an object in front
        color = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.8))
        if rng.random() < 0.5:
            y0 = feet - rng.uniform(0.25, 0.45) * ph
            x0, x1 = rng.uniform(-0.2, 0.3) * width, rng.uniform(0.7, 1.2) * width
            cv.paint(cv.box(x0, x1, y0, height + 1), color)
        else:
            xc = cx + rng.choice([-1, 1]) * rng.uniform(0.05, 0.25) * width
            half = rng.uniform(0.12, 0.2) * width
            cv.paint(cv.box(xc - half, xc + half, -1, height + 1), color)

    # Camera pipeline: exposure, saturation, contrast, colour cast, blur, sensor noise.
    img = cv.img * (1.0 + rng.uniform(-0.05, 0.05))
    gray = img.mean(axis=2, keepdims=True)
    img = gray + cam.saturation * (img - gray)
    img = (img - 0.5) * cam.contrast + 0.5 + cam.brightness
    img = img * cam.gains
    sigma = cam.blur * (height / 128.0) + rng.uniform(0.0, 0.3)
    if sigma > 0.05:
        img = gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
    img = img + rng.normal(0.0, cam.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- writing


def _read_marker(root: Path) -> Optional[dict]:
    try:
        data = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def demo_is_complete(root: Path, seed: Optional[int] = None) -> bool:
    """True when `root` holds a fully written demo set (marker present, file counts match).

    The marker is written last by `generate_demo`, so an interrupted run reads as incomplete.
    With `seed` given, the set must also have been generated with that seed.
    """
    root = Path(root)
    marker = _read_marker(root)
    if marker is None or marker.get("format") != FORMAT_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    counts = marker.get("counts")
    if not isinstance(counts, dict) or set(counts) != set(SPLITS):
        return False
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir() or sum(1 for p in folder.iterdir() if p.suffix == ".jpg") != counts[split]:
            return False
    return True


def _prepare_root(root: Path) -> None:
    """Make `root` ready for writing; refuse to touch folders that hold someone else's images."""
    ours = (root / MARKER_NAME).exists() or (root / PARTIAL_NAME).exists()
    for split in SPLITS:
        folder = root / split
        if folder.is_dir() and any(folder.iterdir()) and not ours:
            raise DsglError(
                f"{folder} already holds files that are not a dsgl demo set; pick an empty --data-dir for the demo"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL_NAME).write_text("generation in progress\n")
    (root / MARKER_NAME).unlink(missing_ok=True)
    for split in SPLITS:
        folder = root / split
        folder.mkdir(exist_ok=True)
        for p in folder.iterdir():
            if p.is_file() and p.suffix == ".jpg":
                p.unlink()


def generate_demo(
    root: Path,
    seed: int = 0,
    num_train_ids: int = 80,
    num_test_ids: int = 50,
    num_cameras: int = 4,
    height: int = 128,
    width: int = 64,
    progress: Optional[Callable[[int, int], None]] = None,
) -> DemoSummary:
    """Write the synthetic demo set under `root/{bounding_box_train,bounding_box_test,query}`.

    Market-1501 naming (method.md section 1): `PPPP_cCsS_FFFFFF_NN.jpg`, distractors id 0000,
    junk id -1.  `progress(done, total)` is called after every image.  The marker file
    `root/.dsgl-demo.json` is written last (see `demo_is_complete`).
    """
    start = time.perf_counter()
    root = Path(root)
    plan = plan_demo(seed, num_train_ids, num_test_ids, num_cameras, height, width)
    try:
        _prepare_root(root)
        total = len(plan.images)
        for done, spec in enumerate(plan.images, start=1):
            Image.fromarray(render_image(plan, spec)).save(root / spec.split / spec.name, format="JPEG", quality=JPEG_QUALITY)
            if progress is not None:
                progress(done, total)
    except OSError as exc:
        raise DsglError(f"could not write the demo data set under {root}: {exc.strerror or exc}") from exc
    counts = plan.counts()
    summary = DemoSummary(
        root=root,
        counts=counts,
        num_train_ids=num_train_ids,
        num_test_ids=num_test_ids,
        num_cameras=num_cameras,
        num_distractors=sum(1 for s in plan.images if s.kind == "distractor"),
        num_junk=sum(1 for s in plan.images if s.kind == "junk"),
        seed=seed,
        height=height,
        width=width,
        seconds=0.0,
    )
    marker = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "num_train_ids": num_train_ids,
        "num_test_ids": num_test_ids,
        "num_cameras": num_cameras,
        "height": height,
        "width": width,
        "counts": counts,
        "num_distractors": summary.num_distractors,
        "num_junk": summary.num_junk,
    }
    tmp = root / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, root / MARKER_NAME)
    (root / PARTIAL_NAME).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return DemoSummary(**{**summary.__dict__, "seconds": seconds})
