"""Training curves drawn with Pillow (no plotting library needed): mAP/Rank-1 and the losses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: dict[str, list[tuple[float, float]]]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    xmin, xmax = min(xs), max(max(xs), min(xs) + 1)
    ymin, ymax = min(ys), max(ys)
    if ymax - ymin < 1e-9:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    pad = 8

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = x0 + pad + (x - xmin) / (xmax - xmin) * (x1 - x0 - 2 * pad)
        py = y1 - pad - (y - ymin) / (ymax - ymin) * (y1 - y0 - 2 * pad)
        return px, py

    draw.text((x0 + 4, y0 + 2), f"{ymax:.3g}", fill=(90, 90, 90))
    draw.text((x0 + 4, y1 - 14), f"{ymin:.3g}", fill=(90, 90, 90))
    draw.text((x1 - 60, y1 + 2), f"epoch {xmax:g}", fill=(90, 90, 90))
    for i, (name, pts) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = [to_px(x, y) for x, y in pts if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
        draw.text((x0 + 60 + 80 * i, y0 + 2), name, fill=color)


def draw_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Redraw ``training_curves.png`` from the metrics rows."""
    img = Image.new("RGB", (720, 300), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def series(key: str) -> list[tuple[float, float]]:
        return [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) is not None]

    _panel(draw, (20, 30, 350, 280), "retrieval", {"mAP": series("mAP"), "rank1": series("rank1")})
    _panel(draw, (380, 30, 700, 280), "losses", {k: series(k) for k in ("loss", "loss_m", "loss_dis", "loss_kl")
                                                 if series(k)})
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)
