"""The shapes every data layout reads into: image records, splits, a data set.

Kept apart from the layouts themselves (`datasets.py` for Market-named folders and the dispatch by
``-d``, `own_layouts.py` for camera folders and manifests), which both build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from dsgl_cli.errors import DsglError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "query", "gallery")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
#: the pid of an image nobody labelled (the ranked-list pictures' UNKNOWN)
UNLABELLED = -1
#: how ``-d folder`` says where the images came from
MARKET, CAMERAS, MANIFEST = "market-named split folders", "camera folders", "manifest"


class ImageRecord(NamedTuple):
    """One image: where it is, who it shows (diagnostics only for train; -1 unknown) and which camera took it."""

    path: str
    pid: int
    camid: int


@dataclass
class SplitReport:
    """What one split held: the usable records and what did not fit (nothing is dropped unsaid)."""

    records: list[ImageRecord] = field(default_factory=list)
    junk: int = 0                       # id -1 images, dropped
    misnamed: list[str] = field(default_factory=list)  # image files outside the naming scheme
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): files that are not images
    labelled: bool = True               # every record carries its true person id

    @property
    def num_ids(self) -> int:
        """Distinct true identities (0 where the split is unlabelled)."""
        return len({r.pid for r in self.records}) if self.labelled else 0

    @property
    def num_cams(self) -> int:
        return len({r.camid for r in self.records})


@dataclass
class ReIDDataset:
    """The splits of one data set, its camera names, and what parsing skipped.

    ``train`` always exists. ``query`` and ``gallery`` are the labelled evaluation splits: where a
    data set has none (camera folders, a manifest without them) reading them is a one-line error
    that says what evaluation needs; ``has_evaluation_splits`` asks first.
    """

    name: str
    root: Path
    splits: dict[str, SplitReport]
    cameras: tuple[str, ...] = ()       # camid -> camera name ("1".."6" for Market names: the digits after _c)
    layout: str = MARKET

    def labelled(self, split: str) -> bool:
        """Whether ``split`` exists and every image in it carries a true person id."""
        return split in self.splits and self.splits[split].labelled

    @property
    def has_evaluation_splits(self) -> bool:
        """Query and gallery both exist with person ids, so mAP can be computed."""
        return self.labelled("query") and self.labelled("gallery")

    @property
    def train(self) -> list[ImageRecord]:
        return self.splits["train"].records

    @property
    def query(self) -> list[ImageRecord]:
        return self._evaluation_split("query")

    @property
    def gallery(self) -> list[ImageRecord]:
        return self._evaluation_split("gallery")

    def _evaluation_split(self, split: str) -> list[ImageRecord]:
        if not self.has_evaluation_splits:
            have = "unlabelled query/gallery" if "query" in self.splits else "train split only"
            raise DsglError(
                f"{self.root} ({self.layout}, {have}) has no query and gallery with person ids, which mAP needs: "
                "add query/ and bounding_box_test/ named like 0002_c1s1_000451_03.jpg, or a manifest with "
                "person and split columns; dsgl cluster, embed and search need no labels")
        return self.splits[split].records

    def camera_name(self, camid: int) -> str:
        """The camera as the user named it (sub-folder, manifest value, or the digits after ``_c``)."""
        return self.cameras[camid] if 0 <= camid < len(self.cameras) else str(camid + 1)

    def camera_caption(self, camid: int) -> str:
        """The camera as pictures show it: ``c1`` for Market names (as in ``_c1``), else the user's name."""
        return f"c{self.camera_name(camid)}" if self.layout == MARKET else self.camera_name(camid)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Every (path, why) that was not read as an image, over all splits."""
        return [item for rep in self.splits.values() for item in rep.skipped]


def not_an_image(path: Path) -> str:
    """Why a file is skipped: its type is not one dsgl reads."""
    return f"not an image file ({path.suffix.lower() or 'no extension'})"
