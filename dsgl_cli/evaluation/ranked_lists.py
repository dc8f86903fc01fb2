"""Pictures of ranked lists: a query followed by its top-k gallery images (``dsgl evaluate --show``).

The list is the one the metrics score (method.md section 6): gallery images with the query's
id *and* camera are dropped, the rest are ordered by distance (ties by gallery index). Why a
picture at all: a wrong match that shares the query's clothes or camera says more about a model
than a number does. So each result shows its camera, person id and distance, framed green for a
true match and red for a wrong person; where ids are unknown (an unlabelled gallery: id -1 or
None) nothing is dropped and frames are neutral grey, since right or wrong cannot be known.

Drawn with Pillow at the images' own resolution (no plotting library, exact pixel geometry:
``panel_size`` and ``cell_origin`` say where everything is) with a TrueType font.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dsgl_cli.errors import DsglError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]
PathLike = Union[str, Path]
Font = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]

CELL_W, CELL_H = 64, 128  # every image is resized to this (the usual re-ID aspect ratio)
FRAME = 4  # frame thickness around each image
GAP = 10  # space between neighbouring gallery cells (room for the captions)
QUERY_GAP = 24  # extra space separating the query from its ranked list
MARGIN = 10
TITLE_H = 48  # two lines: what distance ranked the list; which query and how many results
LEGEND_H = 24  # colour key
LABEL_H = 18  # strip above each cell holding "query" or the rank
CAPTION_H = 48  # three lines under each cell: camera, person id, distance
MIN_WIDTH = 700  # short lists still get room for the title and the legend
SWATCH = 14  # side of a legend's colour square
FONT_SIZE, TITLE_SIZE = 12, 14
BACKGROUND = (255, 255, 255)
QUERY_COLOUR = (40, 90, 220)
MATCH_COLOUR = (0, 170, 0)
MISMATCH_COLOUR = (220, 0, 0)
NEUTRAL_COLOUR = (150, 150, 150)
TEXT_COLOUR = (0, 0, 0)
MUTED_COLOUR = (90, 90, 90)
UNKNOWN = -1  # the id (or camera) of an image nobody labelled

KIND_COLOURS = {"query": QUERY_COLOUR, "match": MATCH_COLOUR, "wrong": MISMATCH_COLOUR, "unknown": NEUTRAL_COLOUR}
KIND_NAMES = {"query": "query", "match": "true match", "wrong": "wrong person", "unknown": "id unknown"}
CAPTION_KEY = "under each image: camera, person id (if known), distance"


@dataclass(frozen=True)
class RankedCell:
    """One framed image: slot 0 is the query, slot k the rank-k result."""

    slot: int
    image: str
    header: str  # "query" or "#k"
    captions: tuple[str, ...]  # camera, person id and (results only) distance
    kind: str  # a key of KIND_COLOURS


@dataclass(frozen=True)
class RankedListPlan:
    """Everything one picture shows, computed before any pixel is drawn (tests read it)."""

    query_index: int
    file_name: str
    title: str
    subtitle: str
    legend: tuple[str, ...]  # kinds, in drawing order
    cells: tuple[RankedCell, ...]


def panel_size(num_gallery: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture showing a query and ``num_gallery`` ranked images."""
    width = 2 * MARGIN + (num_gallery + 1) * (CELL_W + 2 * FRAME)
    if num_gallery > 0:
        width += QUERY_GAP + (num_gallery - 1) * GAP
    height = 2 * MARGIN + TITLE_H + LEGEND_H + LABEL_H + CELL_H + 2 * FRAME + CAPTION_H
    return max(width, MIN_WIDTH), height


def cell_origin(slot: int) -> tuple[int, int]:
    """Top-left pixel of the frame of cell ``slot`` (0 = query, k = rank k)."""
    x = MARGIN + slot * (CELL_W + 2 * FRAME) + max(0, slot - 1) * GAP + (QUERY_GAP if slot > 0 else 0)
    return x, MARGIN + TITLE_H + LEGEND_H + LABEL_H


def legend_layout(kinds: Sequence[str]) -> list[tuple[int, int]]:
    """Top-left pixel of the colour swatch of each legend entry; the caption key follows the last."""
    font, x, out = load_font(FONT_SIZE), MARGIN, []
    for kind in kinds:
        out.append((x, MARGIN + TITLE_H + 4))
        x += SWATCH + 6 + int(font.getlength(KIND_NAMES[kind])) + 22
    out.append((x, MARGIN + TITLE_H + 4))
    return out


def camera_label(camid: Any) -> str:
    """How a camera is written on every picture: ``c1`` for camid 0, as in Market-style file names.

    Camera ids are 0-based inside dsgl (method.md section 1) but people know cameras by the
    ``_c1`` of the file name and the ``camera`` column of ``dsgl cluster --output``; a name that
    is already text is shown as it is, an unknown camera as ``c?``.
    """
    if isinstance(camid, str):
        return camid
    if camid is None or isinstance(camid, bool):
        return "c?"
    try:
        value = float(camid)
    except (TypeError, ValueError):
        return str(camid)
    if not np.isfinite(value) or value < 0 or not value.is_integer():
        return "c?"
    return f"c{int(value) + 1}"


def query_file_name(query_index: int, image_path: PathLike) -> str:
    """``query_00012_0002_c1s1_000451_03.png``: the index keeps names unique, the stem says who it is."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(image_path)).stem).strip("._-")[:80]
    return f"query_{int(query_index):05d}_{stem or 'image'}.png"


def rank_gallery(dist_row: np.ndarray, query_pid: int, query_cam: int, gallery_pids: np.ndarray,
                 gallery_cams: np.ndarray, topk: int) -> np.ndarray:
    """Gallery indices of the top-k list the metrics score: same id *and* camera dropped (when known)."""
    keep = np.flatnonzero(~left_out(query_pid, query_cam, gallery_pids, gallery_cams))
    return keep[np.argsort(dist_row[keep], kind="stable")[:topk]]


def left_out(query_pid: int, query_cam: int, gallery_pids: np.ndarray, gallery_cams: np.ndarray) -> np.ndarray:
    """Mask of the gallery images showing the query's person in the query's camera (never if unknown)."""
    if query_pid == UNKNOWN or query_cam == UNKNOWN:
        return np.zeros(len(gallery_pids), dtype=bool)
    return (gallery_pids == query_pid) & (gallery_cams == query_cam)


def plan_ranked_lists(
    distmat: ArrayLike,
    query_paths: Sequence[PathLike],
    gallery_paths: Sequence[PathLike],
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    num_queries: int = 8,
    topk: int = 10,
    seed: int = 0,
    reranked: bool = False,
) -> list[RankedListPlan]:
    """Check the inputs, sample the queries (seeded) and say what each picture will show."""
    distance = _to_numpy(distmat)
    if distance.ndim != 2:
        raise DsglError(f"the distance matrix must be 2-D (queries x gallery), got shape {distance.shape}")
    num_q, num_g = distance.shape
    qp, gp = _ids(query_pids, num_q, "query_pids"), _ids(gallery_pids, num_g, "gallery_pids")
    qc, gc = _ids(query_camids, num_q, "query_camids"), _ids(gallery_camids, num_g, "gallery_camids")
    if len(query_paths) != num_q or len(gallery_paths) != num_g:
        raise DsglError(
            f"got {len(query_paths)} query and {len(gallery_paths)} gallery image paths "
            f"for a {num_q}x{num_g} distance matrix; pass paths in matrix order"
        )
    if num_queries < 1 or topk < 1:
        raise DsglError(
            f"--show needs a positive number of queries and ranks, got {num_queries} and {topk}",
            exit_code=2,
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(num_q, size=min(num_queries, num_q), replace=False))
    title = "Ranked list by re-ranked distance (k-reciprocal)" if reranked else "Ranked list by plain distance"
    plans = []
    for qi in (int(i) for i in chosen):
        ranked = rank_gallery(distance[qi], qp[qi], qc[qi], gp, gc, topk)
        dropped = int(np.count_nonzero(left_out(qp[qi], qc[qi], gp, gc)))
        cells = [RankedCell(0, str(query_paths[qi]), "query", (camera_label(_cam(qc[qi])), _id_text(qp[qi])),
                            "query")]
        for rank, gi in enumerate(ranked, start=1):
            kind = _kind(qp[qi], gp[gi])
            cells.append(RankedCell(rank, str(gallery_paths[gi]), f"#{rank}",
                                    (camera_label(_cam(gc[gi])), _id_text(gp[gi]), _distance_text(distance[qi, gi])),
                                    kind))
        note = ("query id unknown: nothing left out" if qp[qi] == UNKNOWN else
                f"{dropped} left out: same person, same camera")
        subtitle = (f"query {Path(str(query_paths[qi])).name}  ·  top {len(ranked)} of {num_g - dropped} "
                    f"gallery images  ·  {note}")
        kinds = {c.kind for c in cells[1:]}
        legend = ("query",) + tuple(k for k in ("match", "wrong", "unknown")
                                     if k in kinds or (k != "unknown" and qp[qi] != UNKNOWN))
        plans.append(RankedListPlan(qi, query_file_name(qi, query_paths[qi]), title, subtitle, legend, tuple(cells)))
    return plans


def save_ranked_lists(
    distmat: ArrayLike,
    query_paths: Sequence[PathLike],
    gallery_paths: Sequence[PathLike],
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    out_dir: PathLike,
    num_queries: int = 8,
    topk: int = 10,
    seed: int = 0,
    reranked: bool = False,
) -> list[Path]:
    """Write one PNG per sampled query (query, then its top-k filtered gallery) and return the paths.

    ``reranked`` only changes the title: say True when ``distmat`` is the re-ranked distance.
    """
    plans = plan_ranked_lists(distmat, query_paths, gallery_paths, query_pids, gallery_pids, query_camids,
                              gallery_camids, num_queries=num_queries, topk=topk, seed=seed, reranked=reranked)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in plans:
        path = out / plan.file_name
        draw_ranked_list(plan).save(path)
        written.append(path)
    return written


def draw_ranked_list(plan: RankedListPlan) -> Image.Image:
    """The picture of one plan: title, colour key, then the framed cells with their captions."""
    canvas = Image.new("RGB", panel_size(len(plan.cells) - 1), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, title_font = load_font(FONT_SIZE), load_font(TITLE_SIZE)
    usable = canvas.width - 2 * MARGIN
    draw.text((MARGIN, MARGIN), fit_text(draw, plan.title, title_font, usable), fill=TEXT_COLOUR, font=title_font)
    draw.text((MARGIN, MARGIN + 24), fit_text(draw, plan.subtitle, font, usable), fill=MUTED_COLOUR, font=font)
    *swatches, (key_x, key_y) = legend_layout(plan.legend)
    for kind, (x, y) in zip(plan.legend, swatches):
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=KIND_COLOURS[kind])
        draw.text((x + SWATCH + 6, y), KIND_NAMES[kind], fill=TEXT_COLOUR, font=font)
    draw.text((key_x, key_y), fit_text(draw, CAPTION_KEY, font, canvas.width - MARGIN - key_x), fill=MUTED_COLOUR,
              font=font)
    for cell in plan.cells:
        x, y = cell_origin(cell.slot)
        draw.rectangle([x, y, x + CELL_W + 2 * FRAME - 1, y + CELL_H + 2 * FRAME - 1], fill=KIND_COLOURS[cell.kind])
        canvas.paste(load_tile(cell.image, (CELL_W, CELL_H)), (x + FRAME, y + FRAME))
        draw.text((x + 1, y - LABEL_H + 2), cell.header, fill=TEXT_COLOUR, font=font)
        width = CELL_W + 2 * FRAME + GAP - 2
        for line, text in enumerate(cell.captions):
            draw.text((x + 1, y + CELL_H + 2 * FRAME + 3 + 15 * line), fit_text(draw, text, font, width),
                      fill=TEXT_COLOUR if line == 0 else MUTED_COLOUR, font=font)
    return canvas


@lru_cache(maxsize=8)
def load_font(size: int) -> Font:
    """Pillow's bundled TrueType font at ``size``; its bitmap font if Pillow was built without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def fit_text(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text``, cut with an ellipsis where it would run past ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def load_tile(image_path: PathLike, size: tuple[int, int]) -> Image.Image:
    """The image as RGB at ``size``, or a DsglError naming the file (a moved dataset, a bad file)."""
    try:
        with Image.open(image_path) as img:
            return img.convert("RGB").resize(size)
    except (OSError, ValueError) as exc:
        raise DsglError(f"cannot read image {image_path}: {exc}; check the dataset directory") from exc


def _kind(query_pid: int, gallery_pid: int) -> str:
    if query_pid == UNKNOWN or gallery_pid == UNKNOWN:
        return "unknown"
    return "match" if gallery_pid == query_pid else "wrong"


def _cam(camid: int) -> Optional[int]:
    return None if camid == UNKNOWN else int(camid)


def _id_text(pid: int) -> str:
    return "" if pid == UNKNOWN else f"id {int(pid)}"  # a blank line keeps the distances aligned


def _distance_text(value: float) -> str:
    return f"d {value:.3f}" if abs(value) < 100 else f"d {value:.4g}"


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _ids(x: ArrayLike, length: int, name: str) -> np.ndarray:
    """Integer ids with UNKNOWN (-1) where an id is None, NaN or negative (unlabelled data)."""
    arr = _to_numpy(x).reshape(-1)
    if arr.size != length:
        raise DsglError(f"{name} has {arr.size} entries but the distance matrix needs {length}")
    out = np.full(length, UNKNOWN, dtype=np.int64)
    for i, value in enumerate(arr.tolist()):
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DsglError(f"{name}[{i}] is {value!r}; ids must be integers, -1 or None") from None
        if np.isfinite(number) and number >= 0:
            out[i] = int(number)
    return out
