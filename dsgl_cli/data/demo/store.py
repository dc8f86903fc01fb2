"""Writing the demo set to disk: folders, JPEG files and the completion marker written last.

An interrupted generation leaves no marker, so the next command regenerates; folders that hold
someone else's images are never touched.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from dsgl_cli.data.demo.plan import SPLITS, plan_demo
from dsgl_cli.data.demo.render import render_image
from dsgl_cli.errors import DsglError

MARKER_NAME = ".dsgl-demo.json"
PARTIAL_NAME = ".dsgl-demo.partial"
FORMAT_VERSION = 1
JPEG_QUALITY = 90


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
            Image.fromarray(render_image(plan, spec)).save(root / spec.split / spec.name, format="JPEG",
                                                           quality=JPEG_QUALITY)
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
