"""Data set layouts: find the images, parse them into (path, person id, camera).

Market-named split folders (method.md section 1): the person id comes before ``_c``, the camera
after it; id -1 marks junk (dropped everywhere, so no record carries it), id 0 marks distractors
(kept in the gallery); cameras are 0-based inside. ``-d folder`` also reads a user's own data as
it is (``data/own_layouts.py``): one sub-folder per camera, or a CSV manifest. There nobody needs
to have labelled anyone: a record whose person is unknown has pid ``splits.UNLABELLED`` (-1), and each
split says whether it is labelled (``SplitReport.labelled``), so pseudo-label quality and mAP are
computed only where true ids exist. Identities of the train split are kept only for diagnostics:
training never reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dsgl_cli.data.splits import (
    CAMERAS,
    IMAGE_SUFFIXES,
    MANIFEST,
    MARKET,
    SPLIT_FOLDERS,
    ImageRecord,
    ReIDDataset,
    SplitReport,
    not_an_image,
)
from dsgl_cli.errors import DsglError, check_choice


@dataclass(frozen=True)
class SplitStats:
    """The published size of a split, to compare a local copy with the release."""

    images: int
    ids: int
    cams: int


@dataclass(frozen=True)
class Layout:
    """How one named data set sits under ``--data-dir``."""

    name: str
    subdirs: tuple[str, ...]          # path from data-dir to the folder holding the splits
    pattern: re.Pattern[str]
    max_camera: Optional[int]
    canonical: Optional[dict[str, SplitStats]] = None


_MARKET_RE = re.compile(r"([-\d]+)_c(\d)")
LAYOUTS: dict[str, Layout] = {
    "market1501": Layout(
        "market1501", ("market1501", "Market-1501-v15.09.15"), _MARKET_RE, 6,
        {"train": SplitStats(12936, 751, 6), "query": SplitStats(3368, 750, 6),
         "gallery": SplitStats(15913, 751, 6)},
    ),
    "msmt17": Layout(
        "msmt17", ("msmt17", "MSMT17_V1"), re.compile(r"([-\d]+)_c(\d+)"), 15,
        {"train": SplitStats(32621, 1041, 15), "query": SplitStats(11659, 3060, 15),
         "gallery": SplitStats(82161, 3060, 15)},
    ),
    "dukemtmcreid": Layout(
        "dukemtmcreid", ("dukemtmcreid", "DukeMTMC-reID"), _MARKET_RE, 8,
        {"train": SplitStats(16522, 702, 8), "query": SplitStats(2228, 702, 8),
         "gallery": SplitStats(17661, 1110, 8)},
    ),
    "folder": Layout("folder", (), _MARKET_RE, None),
    "demo": Layout("demo", ("demo",), _MARKET_RE, None),
    # the demo generator at Market-1501's size and resolution: to measure speed at the real scale
    "demo-market": Layout(
        "demo-market", ("demo-market",), _MARKET_RE, 6,
        {"train": SplitStats(12936, 751, 6), "query": SplitStats(3368, 750, 6),
         "gallery": SplitStats(15913, 751, 6)},
    ),
}
#: the data sets the demo generator writes on first use, and their size presets (None: any complete
#: demo set counts, else the default size; see data.demo.ensure_demo)
GENERATED: dict[str, Optional[str]] = {"demo": None, "demo-market": "market"}
#: the choices of -d/--dataset
DATASETS: tuple[str, ...] = tuple(LAYOUTS)


def expected_tree(name: str, data_dir: Path) -> str:
    """The folder tree a data set needs, drawn for error messages and the README."""
    layout = get_layout(name)
    root = Path(data_dir, *layout.subdirs)
    lines = [str(root)]
    for i, folder in enumerate(SPLIT_FOLDERS.values()):
        lines.append(("└── " if i == 2 else "├── ") + folder)
    if name == "folder":
        lines.append("or one sub-folder per camera (any file names, any depth), or a manifest.csv")
    return "\n".join(lines)


def get_layout(name: str) -> Layout:
    """The layout of a data set name, with a 'did you mean' for typos."""
    return LAYOUTS[check_choice(name, DATASETS, "-d/--dataset")]


def dataset_root(name: str, data_dir: Path) -> Path:
    """The folder that holds the split folders for ``name`` under ``data_dir``."""
    return Path(data_dir, *get_layout(name).subdirs)


class MissingSplitError(DsglError):
    """A split folder is absent; carries the expected tree for a helpful message."""

    def __init__(self, missing: Path, tree: str) -> None:
        super().__init__(f"missing folder: {missing}")
        self.missing = missing
        self.tree = tree


def parse_split(folder: Path, pattern: re.Pattern[str], max_camera: Optional[int]) -> SplitReport:
    """Parse every image file name of a split folder (sorted, so indices are stable)."""
    report = SplitReport()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.skipped.append((str(path), not_an_image(path)))
            continue
        match = pattern.match(path.name)
        if match is None:
            report.misnamed.append(path.name)
            continue
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            report.junk += 1
            continue
        if pid < -1 or cam < 1 or (max_camera is not None and cam > max_camera):
            report.misnamed.append(path.name)
            continue
        report.records.append(ImageRecord(str(path), pid, cam - 1))
    return report


def load_dataset(name: str, data_dir: Path, require_nonempty: bool = True) -> ReIDDataset:
    """Find and parse a data set; a missing folder or an empty split is a clear error.

    ``-d folder`` takes the first of: ``--data-dir`` naming a ``.csv`` manifest, a ``manifest.csv``
    inside it, the Market-named split folders (query and gallery optional, together), one
    sub-folder per camera.
    """
    layout = get_layout(name)
    root = dataset_root(name, data_dir)
    if layout.name == "folder":
        from dsgl_cli.data.own_layouts import detect_layout, read_camera_folders, read_manifest

        kind = detect_layout(Path(data_dir))
        if kind == MANIFEST:
            return read_manifest(Path(data_dir))
        if kind == CAMERAS:
            return read_camera_folders(Path(data_dir))
    if layout.name in GENERATED:
        from dsgl_cli.data.demo import ensure_demo

        ensure_demo(root, size=GENERATED[layout.name])
    wanted = dict(SPLIT_FOLDERS)
    if layout.name == "folder" and not any((root / wanted[s]).is_dir() for s in ("query", "gallery")):
        wanted = {"train": SPLIT_FOLDERS["train"]}   # own data without evaluation splits: train only
    splits: dict[str, SplitReport] = {}
    for split, folder_name in wanted.items():
        folder = root / folder_name
        if not folder.is_dir():
            raise MissingSplitError(folder, expected_tree(name, data_dir))
        splits[split] = parse_split(folder, layout.pattern, layout.max_camera)
        if require_nonempty and not splits[split].records:
            raise DsglError(
                f"{folder} holds no image named like '0002_c1s1_000451_03.jpg' "
                f"({len(splits[split].misnamed)} misnamed file(s))"
            )
    top = max((r.camid for rep in splits.values() for r in rep.records), default=-1)
    return ReIDDataset(layout.name, root, splits, tuple(str(c + 1) for c in range(top + 1)), MARKET)
