"""Writing the demo set to disk: folders, JPEG files (see writer) and the completion marker written last.

An interrupted generation leaves no marker, so the next command regenerates; folders that hold
someone else's images are never touched. The marker records the size, so a set of one size is
never taken for another.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dsgl_cli.data.demo.plan import SPLITS, plan_demo
from dsgl_cli.data.demo.sizes import SizeLike, resolve_size, size_from_marker
from dsgl_cli.data.demo.writer import check_pool_settings, refuse_in_starting_worker, write_images
from dsgl_cli.errors import DsglError

MARKER_NAME = ".dsgl-demo.json"
PARTIAL_NAME = ".dsgl-demo.partial"
FORMAT_VERSION = 1  # markers without "size" (written before sizes existed) still read: see size_from_marker


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
    preset: str = "default"  # the size's name: default, market or custom
    workers: int = 1  # processes that wrote the images

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


def demo_is_complete(root: Path, seed: Optional[int] = None, size: Optional[SizeLike] = None) -> bool:
    """True when `root` holds a fully written demo set (marker present, file counts match).

    The marker is written last by `generate_demo`, so an interrupted run reads as incomplete.
    With `seed` given, the set must also have been generated with that seed; with `size` (a
    preset name or `DemoSize`), at that size: a market-size set is not a default one.
    """
    root = Path(root)
    marker = _read_marker(root)
    if marker is None or marker.get("format") != FORMAT_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    if size is not None and size_from_marker(marker) != resolve_size(size).key():
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
    num_train_ids: Optional[int] = None,
    num_test_ids: Optional[int] = None,
    num_cameras: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    size: SizeLike = "default",
    workers: Optional[int] = None,
    chunk_size: Optional[int] = None,
) -> DemoSummary:
    """Write the synthetic demo set under `root/{bounding_box_train,bounding_box_test,query}`.

    Market-1501 naming (method.md section 1): `PPPP_cCsS_FFFFFF_NN.jpg`, distractors id 0000,
    junk id -1. `size` is a preset name ("default", "market") or a `DemoSize`; the count and
    image-size arguments, where given, replace its own. Images are written by `workers`
    processes (None: every core, or this process alone for small sets), in chunks of
    `chunk_size` (None: automatic); the bytes do not depend on either. `progress(done, total)`
    is called once per written image. The marker file `root/.dsgl-demo.json` is written last
    (see `demo_is_complete`).
    """
    refuse_in_starting_worker()
    start = time.perf_counter()
    root = Path(root)
    plan = plan_demo(seed, num_train_ids, num_test_ids, num_cameras, height, width, size=size)
    spec = plan.size
    check_pool_settings(workers, chunk_size)  # before the folder is cleared
    try:
        _prepare_root(root)
        workers = write_images(plan, root, workers=workers, chunk_size=chunk_size, progress=progress)
    except OSError as exc:
        raise DsglError(f"could not write the demo data set under {root}: {exc.strerror or exc}") from exc
    counts = plan.counts()
    summary = DemoSummary(
        root=root,
        counts=counts,
        num_train_ids=spec.num_train_ids,
        num_test_ids=spec.num_test_ids,
        num_cameras=spec.num_cameras,
        num_distractors=sum(1 for s in plan.images if s.kind == "distractor"),
        num_junk=sum(1 for s in plan.images if s.kind == "junk"),
        seed=seed,
        height=spec.height,
        width=spec.width,
        seconds=0.0,
        preset=spec.name,
        workers=workers,
    )
    marker = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "preset": spec.name,
        "num_train_ids": spec.num_train_ids,
        "num_test_ids": spec.num_test_ids,
        "num_cameras": spec.num_cameras,
        "height": spec.height,
        "width": spec.width,
        "counts": counts,
        "num_distractors": summary.num_distractors,
        "num_junk": summary.num_junk,
        "size": spec.key(),
    }
    try:
        tmp = root / (MARKER_NAME + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, root / MARKER_NAME)
        (root / PARTIAL_NAME).unlink(missing_ok=True)
    except OSError as exc:
        raise DsglError(f"could not write the demo data set under {root}: {exc.strerror or exc}") from exc
    seconds = time.perf_counter() - start
    return DemoSummary(**{**summary.__dict__, "seconds": seconds})
