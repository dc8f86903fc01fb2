"""Rendering one planned demo image: a person painted on the camera's backdrop, then the camera's look.

Every image is drawn from its own NumPy generator seeded by (seed, split, file name), so the bytes
depend only on the seed and the configuration, never on the order or parallelism of generation.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from dsgl_cli.data.demo.plan import (
    LOWER_PALETTE,
    SPLITS,
    UPPER_PALETTE,
    VIEWS,
    CameraStyle,
    DemoPlan,
    Identity,
    ImageSpec,
    hsv,
    make_camera,
    make_identity,
    rng_for,
)

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
    cam = make_camera(seed, index, num_cameras)
    rng = rng_for(seed, 4, index)
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
    rng = rng_for(plan.seed, 5, SPLITS.index(spec.split), zlib.crc32(spec.name.encode()))
    backdrop = _camera_backdrop(plan.seed, cam.index, plan.num_cameras, height, width)
    oy = int(rng.integers(0, backdrop.shape[0] - height + 1))
    ox = int(rng.integers(0, backdrop.shape[1] - width + 1))
    cv = _Canvas(backdrop[oy:oy + height, ox:ox + width])
    # Background clutter: a sign, a door, a passer-by's colour block.
    for _ in range(int(rng.integers(0, 2))):
        x0, y0 = rng.uniform(-0.2, 0.9) * width, rng.uniform(-0.1, 0.7) * height
        cv.paint(cv.box(x0, x0 + rng.uniform(0.1, 0.35) * width, y0, y0 + rng.uniform(0.1, 0.4) * height) * 0.8,
                 hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.8)))

    if who is None:  # distractor: an unrelated person, badly framed
        who = make_identity(rng, int(rng.integers(len(UPPER_PALETTE))), int(rng.integers(len(LOWER_PALETTE))))
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
        color = hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.8))
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
