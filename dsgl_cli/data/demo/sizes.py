"""How big the demo set is: named size presets ("default" for a laptop, "market" for Market-1501's size).

Why a dataclass rather than loose arguments: the completion marker records the size, so a set
written at one size is never mistaken for another (`demo_is_complete(root, size=...)`), and the
CLI can offer the presets by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Union

from dsgl_cli.errors import DsglError


@dataclass(frozen=True)
class DemoSize:
    """Identities, cameras and image size of a demo set, and how many images each split gets.

    With the three split totals left at None, per-identity counts are drawn as the original
    demo does (8-14 train images per id, 2-3 gallery images per query camera, distractors
    num_test_ids // 3, junk num_test_ids // 6), so that set stays byte-for-byte the same.
    With them given, the per-identity counts are drawn to sum to exactly those totals:
    `train_images` train files, `query_images` queries (one per camera a test id is seen in),
    and `gallery_images` gallery files that a loader keeps, i.e. test-id images plus
    `num_distractors` (junk files come on top, as Market-1501 counts its gallery).
    """

    name: str
    num_train_ids: int
    num_test_ids: int
    num_cameras: int
    height: int = 128
    width: int = 64
    max_cameras_per_id: int = 4
    train_images: Optional[int] = None
    query_images: Optional[int] = None
    gallery_images: Optional[int] = None
    num_distractors: Optional[int] = None
    num_junk: Optional[int] = None

    @property
    def fixed_totals(self) -> bool:
        """True when split totals are prescribed (any of them), False for the original per-id draws."""
        return any(v is not None for v in (self.train_images, self.query_images, self.gallery_images))

    def key(self) -> dict[str, Any]:
        """Everything that shapes the files, without the name: what a marker must match."""
        out = asdict(self)
        del out["name"]
        return out


DEFAULT_SIZE = DemoSize("default", num_train_ids=80, num_test_ids=50, num_cameras=4)

# Market-1501 (Zheng et al. 2015) as a loader sees it: 12,936 train images of 751 ids, 3,368
# queries of 750 ids, 15,913 gallery images (13,120 of those 750 ids and 2,793 distractors, id
# 0000), 6 cameras, 128 x 64 crops, each id seen by 2-6 cameras. Junk stays at the default's rule
# (num_test_ids // 6 = 125 files, dropped by the loader) instead of Market's 3,819, to keep
# generation short.
MARKET_SIZE = DemoSize(
    "market", num_train_ids=751, num_test_ids=750, num_cameras=6, max_cameras_per_id=6,
    train_images=12_936, query_images=3_368, gallery_images=15_913, num_distractors=2_793,
)

PRESETS: dict[str, DemoSize] = {s.name: s for s in (DEFAULT_SIZE, MARKET_SIZE)}

SizeLike = Union[str, DemoSize]


def preset(name: str) -> DemoSize:
    """The named size preset; an unknown name is a one-line usage error listing the choices."""
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise DsglError(f"unknown demo size '{name}' (choose one of: {', '.join(PRESETS)})", exit_code=2)
    return PRESETS[key]


_OVERRIDABLE = ("num_train_ids", "num_test_ids", "num_cameras", "height", "width")


def resolve_size(size: SizeLike = "default", **overrides: Optional[int]) -> DemoSize:
    """A `DemoSize` from a preset name or instance, with explicit settings (not None) replacing its own.

    A size changed by overrides is named "custom", so a marker never claims a preset it is not.
    """
    base = preset(size) if isinstance(size, str) else size
    if not isinstance(base, DemoSize):
        raise DsglError(f"demo size must be a preset name or a DemoSize, got {type(size).__name__}", exit_code=2)
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise TypeError(f"resolve_size() got unexpected settings: {', '.join(sorted(unknown))}")
    given = {k: int(v) for k, v in overrides.items() if v is not None}
    if all(getattr(base, k) == v for k, v in given.items()):
        return base
    return replace(base, name="custom", **given)


def size_from_marker(marker: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The size key a marker records; markers written before sizes existed hold only the basic fields."""
    recorded = marker.get("size")
    if isinstance(recorded, dict):
        return recorded
    try:
        basic = {k: int(marker[k]) for k in _OVERRIDABLE}
    except (KeyError, TypeError, ValueError):
        return None
    return DemoSize("unknown", **basic).key()  # those sets all used the original per-id draws

