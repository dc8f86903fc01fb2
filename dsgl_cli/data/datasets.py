"""Data set layouts: find the split folders, parse file names into (path, person id, camera).

method.md section 1: the person id comes before ``_c``, the camera after it; id -1 marks junk
(dropped everywhere), id 0 marks distractors (kept in the gallery); cameras are 0-based inside.
Identities of the train split are kept only for diagnostics: training never reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

from dsgl_cli.errors import DsglError, check_choice

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "query", "gallery")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


class ImageRecord(NamedTuple):
    """One image: where it is, who it shows (diagnostics only for train) and which camera took it."""

    path: str
    pid: int
    camid: int


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
}
#: the choices of -d/--dataset
DATASETS: tuple[str, ...] = tuple(LAYOUTS)


@dataclass
class SplitReport:
    """What one split folder held: the usable records and what did not fit."""

    records: list[ImageRecord] = field(default_factory=list)
    junk: int = 0                       # id -1 images, dropped
    misnamed: list[str] = field(default_factory=list)  # image files outside the naming scheme

    @property
    def num_ids(self) -> int:
        return len({r.pid for r in self.records})

    @property
    def num_cams(self) -> int:
        return len({r.camid for r in self.records})


@dataclass
class ReIDDataset:
    """Train / query / gallery records of one data set, plus what parsing skipped."""

    name: str
    root: Path
    splits: dict[str, SplitReport]

    @property
    def train(self) -> list[ImageRecord]:
        return self.splits["train"].records

    @property
    def query(self) -> list[ImageRecord]:
        return self.splits["query"].records

    @property
    def gallery(self) -> list[ImageRecord]:
        return self.splits["gallery"].records


def expected_tree(name: str, data_dir: Path) -> str:
    """The folder tree a data set needs, drawn for error messages and the README."""
    layout = get_layout(name)
    root = Path(data_dir, *layout.subdirs)
    lines = [str(root)]
    for i, folder in enumerate(SPLIT_FOLDERS.values()):
        lines.append(("└── " if i == 2 else "├── ") + folder)
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
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
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
    """Find and parse a data set; a missing folder or an empty split is a clear error."""
    layout = get_layout(name)
    root = dataset_root(name, data_dir)
    if layout.name == "demo":
        from dsgl_cli.data.demo import ensure_demo

        ensure_demo(root)
    splits: dict[str, SplitReport] = {}
    for split, folder_name in SPLIT_FOLDERS.items():
        folder = root / folder_name
        if not folder.is_dir():
            raise MissingSplitError(folder, expected_tree(name, data_dir))
        splits[split] = parse_split(folder, layout.pattern, layout.max_camera)
        if require_nonempty and not splits[split].records:
            raise DsglError(
                f"{folder} holds no image named like '0002_c1s1_000451_03.jpg' "
                f"({len(splits[split].misnamed)} misnamed file(s))"
            )
    return ReIDDataset(layout.name, root, splits)
