"""``training_curves.png``: what a run is doing, redrawn after every evaluated epoch.

Why matplotlib (not hand-drawn pixels): people read these curves to decide whether to stop a run,
so they need labelled axes, real ticks and legends that never hide a point. The picture has up to
four panels sharing one epoch axis: retrieval (mAP / Rank-k), pseudo-label counts (clusters,
outliers), pseudo-label quality (vs hidden ids where known, else label-free figures) and the losses
with the learning rate. Rows may lack any key (``metrics.jsonl`` of label-free training has no mAP):
only the panels with data are drawn, in that order on the fixed 2 x 2 grid (an empty frame read as a
measurement that failed), and the title counts the evaluations that happened, not the rows.

Only the object-oriented API is used (``Figure`` + ``FigureCanvasAgg``): no pyplot global state, no
display, safe to call from a training loop.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # matplotlib is imported on first draw: `dsgl --help` should not pay for it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE_IN = (15.0, 8.5)
DPI = 100
SIZE_PX = (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))  # the PNG's (width, height)
PANEL_PX = (420, 325)  # plot area of each panel; the figure's layout is fixed (see build_curves_figure)
PANEL_ORIGINS_PX = ((75, 462), (800, 462), (75, 62), (800, 62))  # bottom-left corners, filled in order
LEGEND_GAP_PX = 12  # between a panel's right edge and its legend
LR_TICKS_PX = 52  # room for the learning-rate ticks right of the loss panel
MAX_EPOCH_TICKS = 15  # up to this many evaluated epochs, each gets its own tick
MARKERS_UP_TO = 40  # draw point markers while there are this few points: sparse evaluations stay visible


@dataclass(frozen=True)
class Series:
    """One line: the metrics key, its legend name and how it is drawn."""

    key: str
    name: str
    color: str
    style: str = "-"
    width: float = 2.0


RETRIEVAL = (Series("mAP", "mAP", "tab:blue"), Series("rank1", "Rank-1", "tab:orange"),
             Series("rank5", "Rank-5", "tab:orange", ":", 1.3), Series("mINP", "mINP", "tab:blue", ":", 1.3))
COUNTS = (Series("num_clusters", "clusters", "tab:green"), Series("num_outliers", "outliers", "tab:gray"))
QUALITY = (Series("precision", "precision", "tab:purple"), Series("recall", "recall", "tab:brown"),
           Series("ari", "ARI", "tab:red"),
           Series("cross_camera_share", "clusters across cameras", "tab:cyan", "--"),
           Series("ari_prev", "ARI vs previous epoch", "tab:olive", "--"),
           Series("nmi_prev", "NMI vs previous epoch", "tab:pink", "--"),
           Series("intra_similarity", "similarity within clusters", "tab:gray", "--"))
LOSSES = (Series("loss", "total", "black", "-", 2.2), Series("loss_m", "L_m (memory)", "tab:blue", "-", 1.4),
          Series("loss_dis", "L_dis", "tab:orange", "-", 1.4), Series("loss_kl", "L_kl", "tab:green", "-", 1.4))
LR = Series("lr", "lr (right axis)", "tab:gray", ":", 1.4)


def series_points(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows holding a finite number under ``key``; anything else is skipped."""
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        x, y = _number(row.get("epoch")), _number(row.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def padded_limits(values: Sequence[float], min_span: float, lower: Optional[float] = None,
                  upper: Optional[float] = None) -> tuple[float, float]:
    """Axis limits around ``values`` that never collapse: a constant or single value gets ``min_span``.

    ``lower``/``upper`` keep that span from reaching where no value can go (below 0 %, above 100 %):
    it grows the other way instead. Data on a bound keeps its padding (a marker on the frame would
    be cut), and the data itself is never clipped.
    """
    lo, hi = min(values), max(values)
    span = max(hi - lo, min_span, 1e-12)
    centre = (lo + hi) / 2
    pad = 0.08 * span
    lo, hi = centre - span / 2 - pad, centre + span / 2 + pad
    if lower is not None and lo < lower and min(values) >= lower + pad:
        lo, hi = lower, hi + (lower - lo)
    if upper is not None and hi > upper and max(values) <= upper - pad:
        lo, hi = lo - (hi - upper), upper
        if lower is not None and lo < lower and min(values) >= lower + pad:
            lo = lower
    return lo, hi


def build_curves_figure(rows: Sequence[dict[str, Any]]) -> "Figure":
    """The figure ``draw_curves`` writes; returned so tests can read its axes without parsing pixels."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MaxNLocator, PercentFormatter

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    epochs = [x for x in (_number(r.get("epoch")) for r in rows) if x is not None]
    fig.suptitle(f"Training curves: {_title(rows, epochs)}   (epoch 0 = the model before training)",
                 fontsize=13, y=0.985)
    markers = len(rows) <= MARKERS_UP_TO
    # the panels with something to draw, in the grid's order (module doc); the lr alone is no loss panel
    present = [name for name, specs in (("retrieval", RETRIEVAL), ("counts", COUNTS), ("quality", QUALITY),
                                        ("losses", LOSSES))
               if any(series_points(rows, spec.key)[1] for spec in specs)]
    if not present:
        fig.text(0.5, 0.5, "nothing measured yet", ha="center", va="center", color="0.4", fontsize=12)
        return fig
    axes: dict[str, "Axes"] = {}
    for name, (left, bottom) in zip(present, PANEL_ORIGINS_PX):  # fixed: a layout engine doubles drawing time
        first = next(iter(axes.values()), None)
        axes[name] = fig.add_axes((left / SIZE_PX[0], bottom / SIZE_PX[1], PANEL_PX[0] / SIZE_PX[0],
                                   PANEL_PX[1] / SIZE_PX[1]), sharex=first)

    if "retrieval" in axes:
        ax = axes["retrieval"]
        handles = _panel(ax, "retrieval", rows, RETRIEVAL, markers, fraction=True)
        _finish(ax, "Retrieval on query vs gallery", "percent", handles + _best_map(ax, rows))
    if "counts" in axes:
        ax = axes["counts"]
        handles = _panel(ax, "counts", rows, COUNTS, markers, lower=0.0, min_span=4.0, integer=True)
        _finish(ax, "Pseudo labels", "count", handles)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if "quality" in axes:
        ax = axes["quality"]
        handles = _panel(ax, "quality", rows, QUALITY, markers, fraction=True)
        _finish(ax, "Pseudo-label quality (solid: vs true ids; dashed: label-free)", "percent", handles)
    if "losses" in axes:
        ax = axes["losses"]
        handles = _panel(ax, "losses", rows, LOSSES, markers, lower=0.0)
        lr = _learning_rate(ax, rows)
        _finish(ax, "Losses (mean over the epoch)", "loss", handles + lr, legend_px=LR_TICKS_PX if lr else 0)

    distinct = sorted(set(epochs))
    for i, (name, ax) in enumerate(axes.items()):  # ticks on the evaluated epochs while they fit, else round
        ax.xaxis.set_major_locator(FixedLocator(distinct) if 0 < len(distinct) <= MAX_EPOCH_TICKS
                                   else MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelbottom=True)
        if i >= len(axes) - 2:   # nothing drawn below it
            ax.set_xlabel("epoch (completed)")
        if name in ("retrieval", "quality"):
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    if epochs:  # shared by all panels
        lo, hi = min(epochs), max(epochs)
        pad = max(0.5, 0.03 * (hi - lo))
        next(iter(axes.values())).set_xlim(lo - pad, hi + pad)
    return fig


def _title(rows: Sequence[dict[str, Any]], epochs: Sequence[float]) -> str:
    """'epochs 0-16, 17 evaluations', or '... no evaluation (no labelled query/gallery)': what happened."""
    span = (f"epochs {min(epochs):g}-{max(epochs):g}" if epochs and min(epochs) != max(epochs)
            else f"epoch {epochs[0]:g}" if epochs else "no epoch yet")
    evaluated = len(series_points(rows, "mAP")[1])
    if not evaluated:
        return f"{span}, no evaluation (no labelled query/gallery)"
    return f"{span}, {evaluated} evaluation{'s' if evaluated != 1 else ''}"


def draw_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Redraw ``path`` (a PNG of ``SIZE_PX``) from the metrics rows, atomically.

    The file is written to a temporary name in the same folder and moved over ``path`` with
    ``os.replace``, so a viewer refreshing during training never sees half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    canvas = FigureCanvasAgg(build_curves_figure(rows))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: os.replace stays atomic
    try:
        with open(tmp, "wb") as fh:  # open(), not mkstemp: the PNG gets the usual umask permissions
            canvas.print_png(fh)  # one draw; Figure.savefig would lay the figure out twice
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def panel(fig: "Figure", label: str) -> "Axes":
    """The axes of one panel by its label (``retrieval``, ``counts``, ``quality``, ``losses``, ``lr``)."""
    for ax in fig.axes:
        if ax.get_label() == label:
            return ax
    raise KeyError(f"no panel {label!r}; panels: {[ax.get_label() for ax in fig.axes]}")


def _panel(ax: "Axes", label: str, rows: Sequence[dict[str, Any]], specs: Sequence[Series], markers: bool,
           fraction: bool = False, lower: Optional[float] = None, min_span: float = 0.0,
           integer: bool = False) -> list[Any]:
    """Draw the series of ``specs`` that have data and set y limits that never collapse."""
    ax.set_label(label)
    values: list[float] = []
    handles = []
    for spec in specs:
        xs, ys = series_points(rows, spec.key)
        if not ys:
            continue
        values += ys
        last = f"{ys[-1]:.1%}" if fraction else f"{ys[-1]:,.0f}" if integer else _plain(ys[-1])
        handles += ax.plot(xs, ys, spec.style, color=spec.color, lw=spec.width, label=f"{spec.name}: {last}",
                           marker="o" if markers else None, ms=3.5)
    if values and fraction:
        ax.set_ylim(*padded_limits(values, 0.02, lower=0.0, upper=1.0))
    elif values:
        ax.set_ylim(*padded_limits(values, max(min_span, 0.1 * max(abs(v) for v in values), 1e-3), lower=lower))
    return handles


def _finish(ax: "Axes", title: str, ylabel: str, handles: list[Any], legend_px: int = 0) -> None:
    """Title, grid and a legend right of the axes (it never covers a point)."""
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(True, alpha=0.3)
    ax.set_ylabel(ylabel)
    x = 1.0 + (LEGEND_GAP_PX + legend_px) / PANEL_PX[0]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(x, 1.0), fontsize=9, frameon=False,
              title="last value", title_fontsize=9, alignment="left", borderaxespad=0.0)


def _best_map(ax: "Axes", rows: Sequence[dict[str, Any]]) -> list[Any]:
    """A star on the best mAP (the epoch ``model_best.pth`` comes from; the first one on a tie)."""
    xs, ys = series_points(rows, "mAP")
    if len(ys) < 2:
        return []
    i = max(range(len(ys)), key=lambda j: (ys[j], -j))
    return ax.plot([xs[i]], [ys[i]], "*", color="tab:blue", ms=14, mec="white", zorder=5,
                   label=f"best mAP: {ys[i]:.1%} @ epoch {xs[i]:g}")


def _learning_rate(ax: "Axes", rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The learning rate on a right-hand axis of the loss panel: a step in it explains a step in the loss."""
    from matplotlib.ticker import FuncFormatter

    xs, ys = series_points(rows, LR.key)
    if not ys:
        return []
    twin = ax.twinx()
    twin.set_label("lr")
    lines = twin.plot(xs, ys, LR.style, color=LR.color, lw=LR.width, drawstyle="steps-post",
                      label=f"{LR.name}: {_sci(ys[-1])}")
    twin.set_ylim(0.0, 1.15 * max(ys) if max(ys) > 0 else 1.0)  # from zero: steps read as ratios
    twin.tick_params(axis="y", colors=LR.color, labelsize=8)
    twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _sci(v)))
    return lines


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for a missing, None, NaN, boolean or non-numeric value."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _plain(value: float) -> str:
    """Counts as integers with thousands separators, losses with two decimals (three digits if small)."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:#.3g}"


def _sci(value: float) -> str:
    """3.5e-4 rather than 0.00035 or 3.5e-04: learning rates are read in powers of ten."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
