"""The demo set's plan: who appears in which camera and split, under which file name (no pixels yet).

Identity is carried by clothing colours, a coarse clothing pattern, body shape and accessories (cues
that survive a 64x32 downscale); every camera adds its own moderate style (colour cast, exposure,
background, blur, framing, preferred viewpoint). Everything here is drawn from generators keyed by
the seed and fixed integers, so the plan depends only on the configuration (a `DemoSize`). The
default size keeps the original per-identity draws, so its files stay byte-for-byte the same; sized
presets such as "market" deal their images out to hit exact split totals (`draw_to_totals`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dsgl_cli.data.demo.sizes import DEFAULT_SIZE, DemoSize, SizeLike, resolve_size
from dsgl_cli.data.demo.totals import allocate
from dsgl_cli.errors import DsglError

SPLITS = ("bounding_box_train", "bounding_box_test", "query")
DISTRACTOR_ID = 0
JUNK_ID = -1

# Clothing palettes (RGB 0-255): wide spread in hue and lightness so that colour blocks stay
# distinguishable after the camera's cast and a 64x32 downscale.
UPPER_PALETTE = np.array(
    [
        (200, 30, 35), (120, 20, 30), (235, 120, 30), (235, 205, 45), (60, 150, 60),
        (25, 80, 40), (30, 140, 150), (110, 170, 225), (35, 70, 175), (25, 30, 70),
        (120, 55, 150), (230, 120, 170), (115, 70, 40), (215, 195, 150), (240, 240, 235),
        (160, 160, 160), (70, 70, 75), (20, 20, 22),
    ],
    dtype=np.float32,
) / 255.0
LOWER_PALETTE = np.array(
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
    size: DemoSize = DEFAULT_SIZE

    def counts(self) -> dict[str, int]:
        """Files per split folder."""
        out = {s: 0 for s in SPLITS}
        for spec in self.images:
            out[spec.split] += 1
        return out


# ----------------------------------------------------------------------------- validation


def _validate(seed: int, size: DemoSize) -> None:
    """Reject configurations the Market naming or the renderer cannot express."""
    num_train_ids, num_test_ids, num_cameras = size.num_train_ids, size.num_test_ids, size.num_cameras
    height, width = size.height, size.width
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
    if size.max_cameras_per_id < 2:
        raise DsglError(f"demo ids need >= 2 cameras each, got at most {size.max_cameras_per_id}", exit_code=2)
    if not size.fixed_totals and min(num_cameras, size.max_cameras_per_id) > 8:
        raise DsglError("demo ids drawn per id (8-14 train images) can be seen by at most 8 cameras", exit_code=2)
    totals = (size.train_images, size.query_images, size.gallery_images)
    if size.fixed_totals and any(t is None for t in totals):
        raise DsglError("demo split totals: give train, query and gallery images together, or none", exit_code=2)
    for what, n in (("distractors", size.num_distractors), ("junk", size.num_junk)):
        if n is not None and n < 0:
            raise DsglError(f"demo {what} must be >= 0, got {n}", exit_code=2)


# ----------------------------------------------------------------------------- planning


def rng_for(*keys: int) -> np.random.Generator:
    """A generator that depends only on the given non-negative integer keys."""
    return np.random.default_rng([int(k) for k in keys])


def jitter_color(rng: np.random.Generator, base: np.ndarray, amount: float = 0.04) -> np.ndarray:
    return np.clip(base + rng.uniform(-amount, amount, 3), 0.0, 1.0).astype(np.float32)


def make_identity(rng: np.random.Generator, upper_idx: int, lower_idx: int) -> Identity:
    """Draw one person's clothing, shape and accessories."""
    upper = jitter_color(rng, UPPER_PALETTE[upper_idx])
    lower = jitter_color(rng, LOWER_PALETTE[lower_idx])
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.32, 0.2, 0.16, 0.14, 0.18]))]
    # The pattern's second colour contrasts in lightness with the garment, so it survives blur.
    lum = float(upper @ np.array([0.3, 0.59, 0.11], np.float32))
    candidates = [i for i, c in enumerate(UPPER_PALETTE) if abs(float(c @ np.array([0.3, 0.59, 0.11])) - lum) > 0.3]
    pattern_color = jitter_color(rng, UPPER_PALETTE[int(rng.choice(candidates))])
    lower_style = ("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
    return Identity(
        upper=upper,
        lower=lower,
        pattern=pattern,
        pattern_color=pattern_color,
        stripes=int(rng.integers(3, 6)),
        long_sleeves=bool(rng.random() < 0.6),
        lower_style=lower_style,
        skin=jitter_color(rng, _SKIN[int(rng.integers(len(_SKIN)))], 0.03),
        hair=jitter_color(rng, _HAIR[int(rng.integers(len(_HAIR)))], 0.03),
        shoes=jitter_color(rng, _SHOES[int(rng.integers(len(_SHOES)))], 0.03),
        height_ratio=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.82, 1.22)),
        hat=jitter_color(rng, UPPER_PALETTE[int(rng.integers(len(UPPER_PALETTE)))]) if rng.random() < 0.2 else None,
        bag=("none", "backpack", "handbag")[int(rng.choice(3, p=[0.6, 0.25, 0.15]))],
        bag_color=jitter_color(rng, UPPER_PALETTE[int(rng.integers(len(UPPER_PALETTE)))]),
        stride_bias=float(rng.uniform(-0.01, 0.02)),
    )


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def make_camera(seed: int, index: int, num_cameras: int) -> CameraStyle:
    """Draw one camera's style; hues of cast and background are spread around the circle."""
    rng = rng_for(seed, 2, index)
    theta = 2 * np.pi * ((index - 1) / num_cameras + rng.uniform(-0.06, 0.06))
    magnitude = rng.uniform(0.07, 0.13)
    gains = 1.0 + magnitude * np.cos(theta - np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))
    hue = (index - 1) / num_cameras + 0.37 + rng.uniform(-0.07, 0.07)
    sat = rng.uniform(0.12, 0.4)
    val = rng.uniform(0.4, 0.7)
    bg_colors = np.stack(
        [
            hsv(hue, sat, val),
            hsv(hue + rng.uniform(-0.12, 0.12), sat * rng.uniform(0.6, 1.3),
                val + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)),
            hsv(hue + 0.5, rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.8)),
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
        background=BACKGROUNDS[int(rng_for(seed, 6).permutation(len(BACKGROUNDS))[(index - 1) % len(BACKGROUNDS)])],
        bg_colors=bg_colors,
        bg_param=float(rng.uniform(0.55, 0.8)),
    )


def _choose_cameras(rng: np.random.Generator, num_cameras: int, max_cameras: int = 4) -> np.ndarray:
    """Pick the 2..min(num_cameras, max_cameras) cameras (sorted, 1-based) that see one person."""
    top = min(num_cameras, max_cameras)
    k = int(rng.integers(2, top + 1))
    return np.sort(rng.choice(num_cameras, size=k, replace=False)) + 1


def _identity_table(seed: int, num_ids: int) -> dict[int, Identity]:
    """Identities 1..num_ids; the (upper, lower) colour pair is dealt without repetition first."""
    pairs = rng_for(seed, 1).permutation(len(UPPER_PALETTE) * len(LOWER_PALETTE))
    table = {}
    for pid in range(1, num_ids + 1):
        pair = int(pairs[(pid - 1) % len(pairs)])
        table[pid] = make_identity(rng_for(seed, 3, pid), pair // len(LOWER_PALETTE), pair % len(LOWER_PALETTE))
    return table


def _draw_per_id(rng: np.random.Generator, size: DemoSize) -> list[tuple[str, int, int, str]]:
    """The original demo's draws: 8-14 train images per id, 2-3 gallery images per query camera.

    The order of draws from `rng` is part of the default set's bytes: do not reorder.
    """
    num_train_ids, num_test_ids, num_cameras = size.num_train_ids, size.num_test_ids, size.num_cameras
    top = size.max_cameras_per_id
    raw: list[tuple[str, int, int, str]] = []  # split, pid, cam, kind
    for pid in range(1, num_train_ids + 1):
        cams = _choose_cameras(rng, num_cameras, top)
        n = int(rng.integers(8, 15))
        seen = np.concatenate([cams, rng.choice(cams, size=n - len(cams))])
        raw += [("bounding_box_train", pid, int(c), "person") for c in np.sort(seen)]
    for pid in range(num_train_ids + 1, num_train_ids + num_test_ids + 1):
        for c in _choose_cameras(rng, num_cameras, top):
            raw.append(("query", pid, int(c), "person"))
            raw += [("bounding_box_test", pid, int(c), "person")] * int(rng.integers(2, 4))
    return raw + _distractors_and_junk(rng, size)


def _distractors_and_junk(rng: np.random.Generator, size: DemoSize) -> list[tuple[str, int, int, str]]:
    """Gallery-only files: unrelated people (id 0000) and near-empty crops (id -1), each in a random camera."""
    raw: list[tuple[str, int, int, str]] = []
    for _ in range(num_distractors(size)):
        raw.append(("bounding_box_test", DISTRACTOR_ID, int(rng.integers(1, size.num_cameras + 1)), "distractor"))
    for _ in range(num_junk(size)):
        raw.append(("bounding_box_test", JUNK_ID, int(rng.integers(1, size.num_cameras + 1)), "junk"))
    return raw


def num_distractors(size: DemoSize) -> int:
    """Distractor files of a size: its own figure, else the original rule (a third of the test ids)."""
    return max(3, size.num_test_ids // 3) if size.num_distractors is None else size.num_distractors


def num_junk(size: DemoSize) -> int:
    """Junk files of a size: its own figure, else the original rule (a sixth of the test ids)."""
    return max(2, size.num_test_ids // 6) if size.num_junk is None else size.num_junk


# Caps per identity for sized sets (Market-1501's busiest train id has 72 images).
MAX_TRAIN_PER_ID = 72
MAX_GALLERY_PER_CAMERA = 12


def draw_to_totals(rng: np.random.Generator, size: DemoSize) -> list[tuple[str, int, int, str]]:
    """Per-identity counts dealt so the split totals are exactly the size's (see totals.allocate).

    Test ids are seen by 2..max_cameras_per_id cameras, one query each; train ids by as many
    cameras on average. Train images and gallery images per query camera (>= 2, so every query
    keeps a true match in another camera) are skewed, as in real footage.
    """
    cams_top = min(size.num_cameras, size.max_cameras_per_id)
    n_train, n_test = size.num_train_ids, size.num_test_ids
    # _validate checked the totals
    assert size.train_images is not None and size.query_images is not None and size.gallery_images is not None
    test_cams = allocate(rng, size.query_images, np.full(n_test, 2), cams_top, 0.0, "query images")
    train_cams = allocate(rng, round(n_train * size.query_images / n_test), np.full(n_train, 2), cams_top, 0.0,
                          "train cameras")
    train_n = allocate(rng, size.train_images, train_cams, MAX_TRAIN_PER_ID, 0.6, "train images")
    gallery_n = allocate(rng, size.gallery_images - num_distractors(size), np.full(size.query_images, 2),
                         MAX_GALLERY_PER_CAMERA, 0.5, "gallery images")
    raw: list[tuple[str, int, int, str]] = []
    for i, pid in enumerate(range(1, n_train + 1)):
        cams = np.sort(rng.choice(size.num_cameras, size=int(train_cams[i]), replace=False)) + 1
        seen = np.concatenate([cams, rng.choice(cams, size=int(train_n[i]) - len(cams))])
        raw += [("bounding_box_train", pid, int(c), "person") for c in np.sort(seen)]
    slot = 0
    for i, pid in enumerate(range(n_train + 1, n_train + n_test + 1)):
        for c in np.sort(rng.choice(size.num_cameras, size=int(test_cams[i]), replace=False)) + 1:
            raw.append(("query", pid, int(c), "person"))
            raw += [("bounding_box_test", pid, int(c), "person")] * int(gallery_n[slot])
            slot += 1
    return raw + _distractors_and_junk(rng, size)


def plan_demo(
    seed: int = 0,
    num_train_ids: Optional[int] = None,
    num_test_ids: Optional[int] = None,
    num_cameras: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    size: SizeLike = "default",
) -> DemoPlan:
    """List every file of the demo set (split, id, camera, name) without rendering anything.

    `size` is a preset name ("default", "market") or a `DemoSize`; the other settings, where
    given, replace the size's own (the size is then called "custom").
    """
    spec = resolve_size(size, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                        num_cameras=num_cameras, height=height, width=width)
    _validate(seed, spec)
    rng = rng_for(seed, 0)
    raw = draw_to_totals(rng, spec) if spec.fixed_totals else _draw_per_id(rng, spec)
    num_cameras = spec.num_cameras

    # Frame numbers run per camera so names are unique; the sequence digit follows the frame.
    per_cam = {c: sum(1 for r in raw if r[2] == c) for c in range(1, num_cameras + 1)}
    counter = {c: 0 for c in range(1, num_cameras + 1)}
    plan = DemoPlan(seed, spec.height, spec.width, spec.num_train_ids, spec.num_test_ids, num_cameras, size=spec)
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
    plan.identities = _identity_table(seed, spec.num_train_ids + spec.num_test_ids)
    plan.cameras = {c: make_camera(seed, c, num_cameras) for c in range(1, num_cameras + 1)}
    return plan
