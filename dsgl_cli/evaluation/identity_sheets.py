"""Contact sheets of pseudo identities (``dsgl cluster --show N``) and an ``index.html`` to browse them.

Why: on unlabelled data nobody can compute a precision for the clusters, but a person can look. One
sheet per pseudo identity (the N largest: a wrong merge is most costly there) shows its images
grouped by camera, because the point of re-ID clusters is one person *across* cameras: a sheet
whose images all come from one camera, or that mixes two outfits, says what to change (eps,
min_samples, the checkpoint) faster than any number. Large identities are capped at
``max_images`` spread over the cameras and over each camera's images; the sheet says how many
were left out. The index is static HTML with relative links, so the folder can be zipped or
opened from disk with no server and nothing fetched from elsewhere.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from dsgl_cli.console import counted
from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation.ranked_lists import camera_label, fit_text, load_font, load_tile

PathLike = Union[str, Path]
OUTLIER = -1

THUMB_W, THUMB_H = 64, 128  # the usual re-ID size: no upscaling blur
GAP = 6
COLUMNS = 10  # at most this many thumbnails per row inside a camera group
MIN_COLUMNS = 6  # a sheet of small groups is narrower, but keeps room for its title
MARGIN = 12
TITLE_H = 46  # two lines: who, and how many shown
GROUP_LABEL_H = 22  # the camera line above each group
GROUP_GAP = 10
DEFAULT_MAX_IMAGES = 60  # six full rows: enough to judge a cluster, small enough to open quickly
FONT_SIZE, TITLE_SIZE = 12, 15
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MUTED = (90, 90, 90)
GROUP_BAND = (236, 240, 248)


@dataclass(frozen=True)
class CameraGroup:
    """The images of one identity taken by one camera: how many there are and which are shown."""

    camera: str  # as written on the pictures (``c1`` for camid 0)
    total: int
    shown: tuple[str, ...]


@dataclass(frozen=True)
class IdentitySheetPlan:
    """What one sheet shows, decided before drawing (tests and the index read it)."""

    label: int
    size: int
    file_name: str
    groups: tuple[CameraGroup, ...]

    @property
    def left_out(self) -> int:
        return self.size - sum(len(g.shown) for g in self.groups)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(g.camera for g in self.groups)


def largest_identities(pseudo_labels: Any, num_identities: int) -> list[tuple[int, int]]:
    """(label, size) of the ``num_identities`` largest pseudo identities; ties go to the smaller label."""
    labels = _labels(pseudo_labels)
    counts = Counter(int(v) for v in labels if v != OUTLIER)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:num_identities]


def share_out(counts: Sequence[int], cap: int) -> list[int]:
    """How many images of each camera to show so the total is at most ``cap``, shared as evenly as possible.

    Small groups are shown whole and what they leave goes to the larger ones (water filling), so a
    camera that saw the person twice is never squeezed out by one that saw them fifty times: a group
    shown in part gets at least as many as any other group, less one.
    """
    shown = [0] * len(counts)
    remaining = cap
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    for done, i in enumerate(order):
        shown[i] = min(counts[i], remaining // (len(order) - done))
        remaining -= shown[i]  # the last (largest) group takes whatever is left, so nothing is lost to rounding
    return shown


def plan_identity_sheets(
    image_paths: Sequence[PathLike],
    pseudo_labels: Any,
    cameras: Sequence[Any],
    num_identities: int,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> list[IdentitySheetPlan]:
    """Check the inputs and decide, for the N largest identities, which images each sheet shows."""
    labels = _labels(pseudo_labels)
    cams = list(_as_list(cameras))
    if not (len(image_paths) == len(labels) == len(cams)):
        raise DsglError(f"got {len(image_paths)} image paths, {len(labels)} pseudo labels and {len(cams)} cameras; "
                        "pass one of each per image, in the same order")
    if num_identities < 1 or max_images < 1:
        raise DsglError(f"--show needs a positive number of identities and images per sheet, got {num_identities} "
                        f"and {max_images}", exit_code=2)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(int(label), []).append(i)
    plans = []
    for label, size in largest_identities(labels, num_identities):
        by_camera: dict[Any, list[str]] = {}
        for i in members[label]:
            by_camera.setdefault(_camera_key(cams[i]), []).append(str(image_paths[i]))
        keys = sorted(by_camera, key=_camera_order)
        groups = [sorted(by_camera[k], key=lambda p: (Path(p).name, p)) for k in keys]
        quota = share_out([len(g) for g in groups], max_images)
        plans.append(IdentitySheetPlan(label, size, f"identity_{label:05d}.png", tuple(
            CameraGroup(camera_label(k), len(g), tuple(g[j] for j in _spread(len(g), q)))
            for k, g, q in zip(keys, groups, quota))))
    return plans


def save_identity_sheets(
    image_paths: Sequence[PathLike],
    pseudo_labels: Any,
    cameras: Sequence[Any],
    out_dir: PathLike,
    num_identities: int,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> list[Path]:
    """Write one PNG per pseudo identity (largest first), then ``index.html``; return those paths in that order.

    ``pseudo_labels`` holds one label per image, -1 for an outlier; ``cameras`` one camera per
    image, a 0-based camid (shown as ``c1``, ``c2``, ...) or a name shown as it is.
    """
    plans = plan_identity_sheets(image_paths, pseudo_labels, cameras, num_identities, max_images)
    labels = _labels(pseudo_labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in plans:
        path = out / plan.file_name
        draw_identity_sheet(plan).save(path)
        written.append(path)
    num_ids = len({int(v) for v in labels if v != OUTLIER})
    index = out / "index.html"
    index.write_text(index_html(plans, [sheet_size(p) for p in plans], num_ids,
                                int(np.count_nonzero(labels == OUTLIER)), len(labels)), encoding="utf-8")
    return written + [index]


def sheet_columns(plan: IdentitySheetPlan) -> int:
    """Thumbnails per row: as many as the largest group shows, within [MIN_COLUMNS, COLUMNS]."""
    return min(COLUMNS, max([MIN_COLUMNS] + [len(g.shown) for g in plan.groups]))


def sheet_size(plan: IdentitySheetPlan) -> tuple[int, int]:
    """(width, height) of a sheet: one band per camera group, each wrapping at ``sheet_columns``."""
    cols = sheet_columns(plan)
    width = 2 * MARGIN + cols * THUMB_W + (cols - 1) * GAP
    height = MARGIN + TITLE_H + sum(_group_height(len(g.shown), cols) + GROUP_GAP for g in plan.groups) + MARGIN
    return width, height


def thumb_origin(plan: IdentitySheetPlan, group: int, index: int) -> tuple[int, int]:
    """Top-left pixel of thumbnail ``index`` of camera group ``group``."""
    cols = sheet_columns(plan)
    y = MARGIN + TITLE_H + sum(_group_height(len(g.shown), cols) + GROUP_GAP for g in plan.groups[:group])
    row, col = divmod(index, cols)
    return MARGIN + col * (THUMB_W + GAP), y + GROUP_LABEL_H + row * (THUMB_H + GAP)


def draw_identity_sheet(plan: IdentitySheetPlan) -> Image.Image:
    """One identity: a title, then per camera a labelled band of its (shown) images."""
    canvas = Image.new("RGB", sheet_size(plan), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, title_font = load_font(FONT_SIZE), load_font(TITLE_SIZE)
    usable = canvas.width - 2 * MARGIN
    title = (f"pseudo identity {plan.label}: {counted(plan.size, 'image')} from {len(plan.groups)} "
             f"camera{'s' if len(plan.groups) != 1 else ''} ({', '.join(plan.cameras)})")
    shown = plan.size - plan.left_out
    note = f"all {plan.size} images shown" if not plan.left_out else \
        f"{shown} shown, {plan.left_out} left out (spread evenly over the cameras and within each)"
    draw.text((MARGIN, MARGIN), fit_text(draw, title, title_font, usable), fill=TEXT, font=title_font)
    draw.text((MARGIN, MARGIN + 22), fit_text(draw, note, font, usable), fill=MUTED, font=font)
    for gi, group in enumerate(plan.groups):
        x, y = thumb_origin(plan, gi, 0)
        band_top = y - GROUP_LABEL_H
        draw.rectangle([MARGIN - 4, band_top, canvas.width - MARGIN + 3,
                        band_top + _group_height(len(group.shown), sheet_columns(plan)) + 3], fill=GROUP_BAND)
        text = f"{group.camera}: {group.total} image{'s' if group.total != 1 else ''}"
        if len(group.shown) < group.total:
            text += f" ({len(group.shown)} shown, {group.total - len(group.shown)} left out)"
        draw.text((MARGIN, band_top + 4), fit_text(draw, text, font, usable), fill=TEXT, font=font)
        for ti, image in enumerate(group.shown):
            canvas.paste(load_tile(image, (THUMB_W, THUMB_H)), thumb_origin(plan, gi, ti))
    return canvas


def index_html(plans: Sequence[IdentitySheetPlan], sizes: Sequence[tuple[int, int]], num_identities: int,
               num_outliers: int, num_images: int) -> str:
    """A self-contained page: a summary, a table of contents and every sheet (relative links only)."""
    esc = html.escape
    rows, sections = [], []
    for plan, (w, h) in zip(plans, sizes):
        cams = ", ".join(f"{esc(g.camera)} ({g.total})" for g in plan.groups)
        left = f"{plan.left_out} not shown" if plan.left_out else "all shown"
        anchor = f"identity-{plan.label}"
        rows.append(f'<tr><td><a href="#{anchor}">{plan.label}</a></td><td>{plan.size}</td>'
                    f"<td>{len(plan.groups)}</td><td>{cams}</td><td>{left}</td></tr>")
        sections.append(
            f'<section id="{anchor}" style="max-width: {w + 2}px"><h2>Identity {plan.label}</h2>'
            f"<p>{plan.size} images &middot; cameras {cams} &middot; {left}</p>"
            f'<a href="{esc(plan.file_name)}"><img src="{esc(plan.file_name)}" width="{w}" height="{h}" '
            f'loading="lazy" alt="pseudo identity {plan.label}: {plan.size} images from cameras '
            f'{esc(", ".join(plan.cameras))}"></a></section>')
    summary = (f"{counted(num_images, 'image')}: {counted(num_identities, 'pseudo identity', 'pseudo identities')} "
               f"and {counted(num_outliers, 'outlier')} (label -1). "
               f"Shown: the {len(plans)} largest identities, each sheet grouping its images by camera. "
               "A good identity is one person seen by several cameras.")
    if not plans:
        summary += " There is no identity to show: every image is an outlier."
    table = ("<table><thead><tr><th>identity</th><th>images</th><th>cameras</th><th>per camera</th>"
             f"<th>shown</th></tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody></table>") if rows else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Pseudo identities</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
.sheets {{ display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }}
section {{ max-width: 100%; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ccc; }}
h2 {{ margin-bottom: 0.2em; }}
p {{ margin-top: 0.2em; color: #555; }}
</style>
</head>
<body>
<h1>Pseudo identities</h1>
<p>{esc(summary)}</p>
{table}
<div class="sheets">
{chr(10).join(sections)}
</div>
</body>
</html>
"""


def _group_height(shown: int, columns: int) -> int:
    rows = max(1, -(-shown // columns))
    return GROUP_LABEL_H + rows * THUMB_H + (rows - 1) * GAP


def _spread(total: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(total)``: sorted names follow time, so this spans the track."""
    if k >= total:
        return list(range(total))
    if k == 1:
        return [0]
    return [int(np.floor(i * (total - 1) / (k - 1) + 0.5)) for i in range(k)]


def _camera_key(camera: Any) -> Any:
    """numpy / torch scalars become plain ints so the same camera groups once."""
    if isinstance(camera, (np.integer, torch.Tensor)):
        return int(camera)
    return camera


def _camera_order(camera: Any) -> tuple[int, Any]:
    """Numbers first, in numeric order (c2 before c10), then names; unknown cameras last."""
    if isinstance(camera, (int, float)) and not isinstance(camera, bool):
        return (0, camera)
    return (1, str(camera)) if camera is not None else (2, "")


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, np.ndarray):
        return values.reshape(-1).tolist()
    return list(values)


def _labels(pseudo_labels: Any) -> np.ndarray:
    """Integer labels, -1 for outliers; anything else that is not an integer is a one-line DsglError."""
    values = _as_list(pseudo_labels)
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not float(value).is_integer() or value < OUTLIER:
            raise DsglError(f"pseudo label {i} is {value!r}; labels must be integers, -1 for an outlier")
        out[i] = int(value)
    return out
