"""A user's own images as they are: one sub-folder per camera, or a CSV manifest (``-d folder``).

Why: a camera network's crops come with camera names and arbitrary file names, and nobody has
said who is who. ``-d folder --data-dir DIR`` reads:

- camera folders: every sub-folder of DIR is one camera (its name is the camera's), holding images
  under any names at any depth. No identities, no query/gallery: a train split only.
- a manifest: ``--data-dir path/to/list.csv``, or a ``manifest.csv`` inside DIR. A header row, then
  one row per image: ``path,camera[,person][,split]``. Paths are relative to the manifest's folder
  (absolute ones are taken as they are); ``person`` is an integer id, empty where unknown (-1 marks
  junk, dropped as in Market names); ``split`` is train, query or gallery (empty: train). A split is
  labelled when every row of it has a person; mAP needs labelled query and gallery.

Camera ids are 0..K-1 in natural order of the names (cam2 before cam10); the names stay on the
data set. Files that are not images are skipped and named (``ReIDDataset.skipped``); hidden files
and folders (names starting with '.') are ignored.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from dsgl_cli.data.splits import (
    CAMERAS,
    IMAGE_SUFFIXES,
    MANIFEST,
    MARKET,
    SPLIT_FOLDERS,
    SPLITS,
    UNLABELLED,
    ImageRecord,
    ReIDDataset,
    SplitReport,
    not_an_image,
)
from dsgl_cli.errors import DsglError, suggest

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "camera", "person", "split")
MAX_NAMED = 3  # examples named in a one-line error


def natural_key(text: str) -> list[Any]:
    """Sort key that puts cam2 before cam10 (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def detect_layout(data_dir: Path) -> str:
    """Which layout ``-d folder --data-dir data_dir`` holds; a one-line error when it is none of them."""
    if data_dir.is_file():
        if data_dir.suffix.lower() == ".csv":
            return MANIFEST
        raise DsglError(f"--data-dir {data_dir} is a file; give a folder or a .csv manifest", exit_code=2)
    if not data_dir.is_dir():
        raise DsglError(f"--data-dir {data_dir} does not exist", exit_code=2)
    if (data_dir / MANIFEST_NAME).is_file():
        return MANIFEST
    if any((data_dir / name).is_dir() for name in SPLIT_FOLDERS.values()):
        return MARKET
    if _visible(data_dir, dirs=True):
        return CAMERAS
    loose = sum(1 for p in _visible(data_dir, dirs=False) if p.suffix.lower() in IMAGE_SUFFIXES)
    where = f"its {loose} image(s) lie directly in it" if loose else "it holds no image folder"
    raise DsglError(f"{data_dir} is not a layout -d folder reads ({where}): put each camera's images in a "
                    f"sub-folder named after the camera, or list them in {MANIFEST_NAME} "
                    "(path,camera[,person][,split])")


def _visible(folder: Path, dirs: bool) -> list[Path]:
    """The non-hidden sub-folders (``dirs``) or files of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir() == dirs)


def walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, at any depth, in sorted path order."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(top, f) for f in files if not f.startswith("."))
    return sorted(found)


def read_camera_folders(root: Path) -> ReIDDataset:
    """One camera per sub-folder of ``root``; an empty camera folder is an error (a typo, a failed copy)."""
    report = SplitReport(labelled=False)
    for path in _visible(root, dirs=False):
        why = "not inside a camera folder" if path.suffix.lower() in IMAGE_SUFFIXES else not_an_image(path)
        report.skipped.append((str(path), why))
    folders = sorted(_visible(root, dirs=True), key=lambda p: natural_key(p.name))
    for camid, folder in enumerate(folders):
        files = walk_files(folder)
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            others = f" ({len(files)} other file(s), none an image)" if files else ""
            raise DsglError(f"camera folder {folder} holds no image{others}; add its images or remove the folder")
        report.records.extend(ImageRecord(str(f), UNLABELLED, camid) for f in images)
        report.skipped.extend((str(f), not_an_image(f)) for f in files if f.suffix.lower() not in IMAGE_SUFFIXES)
    return ReIDDataset("folder", root, {"train": report}, tuple(f.name for f in folders), CAMERAS)


@dataclass
class ManifestRow:
    """One row of a manifest, after checking."""

    line: int
    path: Path
    camera: str
    person: Optional[int]
    split: str


def manifest_path(data_dir: Path) -> Path:
    """The manifest ``--data-dir`` names: the .csv itself, or the manifest.csv inside a folder."""
    return data_dir if data_dir.is_file() else data_dir / MANIFEST_NAME


def read_manifest_rows(path: Path) -> list[ManifestRow]:
    """Parse and check a manifest; every problem is one line naming the file and the row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            table = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise DsglError(f"manifest {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except (OSError, csv.Error) as exc:
        raise DsglError(f"cannot read manifest {path}: {exc}") from None
    if not table:
        raise DsglError(f"manifest {path} is empty; it needs a header row path,camera[,person][,split]")
    header = [cell.strip().lower() for cell in table[0]]
    for name in header:
        if name not in MANIFEST_COLUMNS:
            raise DsglError(f"manifest {path}: unknown column '{name}'{suggest(name, MANIFEST_COLUMNS)} "
                            f"(columns: path,camera[,person][,split])")
    missing = [c for c in ("path", "camera") if c not in header]
    if missing or len(set(header)) != len(header):
        raise DsglError(f"manifest {path}: the header must name path and camera once each, got {','.join(header)}")
    col = {name: i for i, name in enumerate(header)}
    rows: list[ManifestRow] = []
    for line, raw in enumerate(table[1:], start=2):
        cells = [c.strip() for c in raw] + [""] * max(0, len(header) - len(raw))
        if len(raw) > len(header):
            raise DsglError(f"manifest {path} line {line}: {len(raw)} cells for {len(header)} columns")
        where = f"manifest {path} line {line}"
        if not cells[col["path"]] or not cells[col["camera"]]:
            raise DsglError(f"{where}: path and camera must not be empty")
        split = cells[col["split"]].lower() if "split" in col and cells[col["split"]] else "train"
        if split not in SPLITS:
            raise DsglError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}{suggest(split, SPLITS)}")
        person = _person(cells[col["person"]], where) if "person" in col else None
        rows.append(ManifestRow(line, path.parent / cells[col["path"]], cells[col["camera"]], person, split))
    if not rows:
        raise DsglError(f"manifest {path} lists no image (only a header)")
    absent = [r for r in rows if not r.path.is_file()]
    if absent:
        named = ", ".join(f"line {r.line}: {r.path}" for r in absent[:MAX_NAMED])
        raise DsglError(f"manifest {path}: {len(absent)} listed file(s) do not exist ({named}"
                        f"{' ...' if len(absent) > MAX_NAMED else ''}); paths are relative to the manifest's folder")
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (os.path.normpath(r.path), r.split)
        if key in seen:
            raise DsglError(f"manifest {path} line {r.line}: {r.path} is listed twice in {r.split} "
                            f"(first on line {seen[key]})")
        seen[key] = r.line
    return rows


def _person(text: str, where: str) -> Optional[int]:
    """An integer person id, None where the cell is empty."""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise DsglError(f"{where}: person '{text}' is not an integer id (leave it empty where unknown)") from None
    if value < -1:
        raise DsglError(f"{where}: person {value} is negative (ids are >= 0; -1 marks junk)")
    return value


def read_manifest(data_dir: Path) -> ReIDDataset:
    """The data set a manifest describes: splits in the order listed, camera ids by name."""
    path = manifest_path(data_dir)
    rows = read_manifest_rows(path)
    names = sorted({r.camera for r in rows}, key=natural_key)
    camid = {name: i for i, name in enumerate(names)}
    splits: dict[str, SplitReport] = {}
    for split in SPLITS:
        mine = [r for r in rows if r.split == split]
        if not mine:
            continue
        known = sum(r.person is not None for r in mine)
        if 0 < known < len(mine):
            raise DsglError(f"manifest {path}: {known} of the {len(mine)} {split} rows name a person; "
                            "give every row of a split a person or none")
        report = SplitReport(labelled=known == len(mine))
        for r in mine:
            if r.path.suffix.lower() not in IMAGE_SUFFIXES:
                report.skipped.append((str(r.path), not_an_image(r.path)))
            elif r.person == -1:
                report.junk += 1
            else:
                report.records.append(ImageRecord(str(r.path), UNLABELLED if r.person is None else r.person,
                                                  camid[r.camera]))
        splits[split] = report
    if "train" not in splits or not splits["train"].records:
        raise DsglError(f"manifest {path} lists no train image (rows without a split are train)")
    if ("query" in splits) != ("gallery" in splits):
        raise DsglError(f"manifest {path} has {'query' if 'query' in splits else 'gallery'} rows but no "
                        f"{'gallery' if 'query' in splits else 'query'} rows; give both or neither")
    return ReIDDataset("folder", path, splits, tuple(names), MANIFEST)


@dataclass
class ImageList:
    """Images collected from command-line paths (``dsgl embed``, ``dsgl search``), with their cameras."""

    paths: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)   # "" where unknown
    skipped: list[tuple[str, str]] = field(default_factory=list)


def collect_images(inputs: Sequence[Path], flag: str) -> ImageList:
    """Images under files, folders (recursively) or manifests, each once, in the order given.

    A folder that holds no image itself, only sub-folders, is read as camera folders: each image's
    camera is the sub-folder directly below it. A folder holding images itself is not (its
    sub-folders may be days or hours): its images have no camera (""), as have image files given by
    name; a manifest gives its camera column. A path that is neither an image, a folder nor a .csv
    manifest is an error; non-image files found inside folders are skipped and named.
    """
    out = ImageList()
    seen: set[str] = set()

    def add(path: Path, camera: str) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.paths.append(key)
            out.cameras.append(camera)

    for given in inputs:
        given = Path(given)
        if given.is_dir() and not (given / MANIFEST_NAME).is_file():
            files = walk_files(given)
            by_camera = not any(f.parent == given and f.suffix.lower() in IMAGE_SUFFIXES for f in files)
            for path in files:
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    out.skipped.append((str(path), not_an_image(path)))
                    continue
                add(path, path.relative_to(given).parts[0] if by_camera else "")
        elif given.is_dir() or (given.suffix.lower() == ".csv" and given.is_file()):
            for row in read_manifest_rows(manifest_path(given)):
                if row.path.suffix.lower() in IMAGE_SUFFIXES:
                    add(row.path, row.camera)
                else:
                    out.skipped.append((str(row.path), not_an_image(row.path)))
        elif given.is_file():
            if given.suffix.lower() not in IMAGE_SUFFIXES:
                raise DsglError(f"{flag} {given} is not an image ({not_an_image(given)}), a folder or a .csv manifest")
            add(given, "")
        else:
            raise DsglError(f"{flag} {given}: no such file or folder")
    if not out.paths:
        raise DsglError(f"{flag} {', '.join(str(p) for p in inputs)}: no image found "
                        f"({len(out.skipped)} other file(s))")
    return out
