"""Pictures of ranked lists: a query followed by its top-k gallery images (``dsgl evaluate --show``).

The list is the one the metrics score (method.md section 6): gallery images with the query's
id *and* camera are dropped, the rest are ordered by distance (ties by gallery index). Each
gallery image is framed green when it is a true match and red otherwise, under its rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dsgl_cli.errors import DsglError

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, Path]

CELL_W, CELL_H = 64, 128  # every image is resized to this (the usual re-ID aspect ratio)
FRAME = 4  # frame thickness around each image
GAP = 6  # space between neighbouring gallery cells
QUERY_GAP = 18  # extra space separating the query from its ranked list
MARGIN = 8
LABEL_H = 16  # strip above each cell holding "query" or the rank number
BACKGROUND = (255, 255, 255)
QUERY_COLOUR = (40, 90, 220)
MATCH_COLOUR = (0, 170, 0)
MISMATCH_COLOUR = (220, 0, 0)
TEXT_COLOUR = (0, 0, 0)


def panel_size(num_gallery: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture showing a query and ``num_gallery`` ranked images."""
    width = 2 * MARGIN + (num_gallery + 1) * (CELL_W + 2 * FRAME)
    if num_gallery > 0:
        width += QUERY_GAP + (num_gallery - 1) * GAP
    return width, 2 * MARGIN + LABEL_H + CELL_H + 2 * FRAME


def cell_origin(slot: int) -> tuple[int, int]:
    """Top-left pixel of the frame of cell ``slot`` (0 = query, k = rank k)."""
    x = MARGIN + slot * (CELL_W + 2 * FRAME) + max(0, slot - 1) * GAP + (QUERY_GAP if slot > 0 else 0)
    return x, MARGIN + LABEL_H


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
) -> list[Path]:
    """Write one PNG per sampled query (query, then its top-k filtered gallery) and return the paths."""
    dist = _to_numpy(distmat)
    if dist.ndim != 2:
        raise DsglError(f"the distance matrix must be 2-D (queries x gallery), got shape {dist.shape}")
    num_q, num_g = dist.shape
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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(num_q, size=min(num_queries, num_q), replace=False))
    font = ImageFont.load_default()
    written = []
    for qi in chosen:
        keep = np.flatnonzero(~((gp == qp[qi]) & (gc == qc[qi])))
        ranked = keep[np.argsort(dist[qi, keep], kind="stable")[:topk]]
        is_match = gp[ranked] == qp[qi]
        canvas = Image.new("RGB", panel_size(len(ranked)), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        _draw_cell(canvas, draw, font, 0, query_paths[qi], QUERY_COLOUR, "query")
        for rank, (gi, hit) in enumerate(zip(ranked, is_match), start=1):
            colour = MATCH_COLOUR if hit else MISMATCH_COLOUR
            _draw_cell(canvas, draw, font, rank, gallery_paths[gi], colour, str(rank))
        path = out / f"query_{int(qi):05d}.png"
        canvas.save(path)
        written.append(path)
    return written


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    font,
    slot: int,
    image_path: PathLike,
    colour: tuple[int, int, int],
    label: str,
) -> None:
    """Paste one framed image with its label above it."""
    x, y = cell_origin(slot)
    draw.rectangle([x, y, x + CELL_W + 2 * FRAME - 1, y + CELL_H + 2 * FRAME - 1], fill=colour)
    try:
        with Image.open(image_path) as img:
            tile = img.convert("RGB").resize((CELL_W, CELL_H))
    except (OSError, ValueError) as exc:
        raise DsglError(f"cannot read image {image_path}: {exc}; check the dataset directory") from exc
    canvas.paste(tile, (x + FRAME, y + FRAME))
    draw.text((x + 2, y - LABEL_H + 2), label, fill=TEXT_COLOUR, font=font)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _ids(x: ArrayLike, length: int, name: str) -> np.ndarray:
    arr = _to_numpy(x).reshape(-1)
    if arr.size != length:
        raise DsglError(f"{name} has {arr.size} entries but the distance matrix needs {length}")
    return arr
