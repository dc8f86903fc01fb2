"""Training curves: the PNG decodes at its size, axes never collapse, epochs tick on integers."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from dsgl_cli.training import curves
from dsgl_cli.training.curves import build_curves_figure, draw_curves, padded_limits, panel


def full_rows(n: int = 6) -> list[dict]:
    rows = [{"epoch": 0, "mAP": 0.05, "rank1": 0.12, "rank5": 0.3, "mINP": 0.01}]
    for e in range(1, n):
        rows.append({"epoch": e, "mAP": 0.05 + 0.05 * e, "rank1": 0.12 + 0.08 * e, "num_clusters": 300 + 10 * e,
                     "num_outliers": 900 - 50 * e, "precision": 0.5 + 0.05 * e, "recall": 0.4 + 0.05 * e,
                     "ari": None if e == 2 else 0.3 + 0.05 * e, "loss": 8.0 - e, "loss_m": 6.0 - e,
                     "loss_dis": 1.0, "loss_kl": 0.5, "lr": 3.5e-4 if e < 4 else 3.5e-5})
    return rows


def label_free_rows() -> list[dict]:
    """No mAP, no quality vs true ids: what training on unlabelled data writes."""
    return [{"epoch": e, "num_clusters": 40 + e, "num_outliers": 100 - e, "cross_camera_share": 0.5 + 0.02 * e,
             "ari_prev": None if e == 1 else 0.8, "intra_similarity": 0.6, "loss": 4.0 - 0.1 * e}
            for e in range(1, 8)]


def visible_ticks(ax, axis: str) -> list[float]:
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def panels(fig) -> list[str]:
    return [ax.get_label() for ax in fig.axes if ax.get_label() != "lr"]


def assert_integer_epochs(fig) -> None:
    for name in panels(fig):
        ticks = visible_ticks(panel(fig, name), "x")
        assert ticks, name
        assert all(float(t).is_integer() for t in ticks), (name, ticks)


@pytest.mark.parametrize("rows", [full_rows(), label_free_rows(), full_rows()[:1], []],
                         ids=["labelled", "label-free", "single-row", "no-rows"])
def test_png_decodes_at_its_size_and_leaves_no_temp_file(tmp_path, rows):
    path = tmp_path / "training_curves.png"
    path.write_bytes(b"an older picture")
    draw_curves(rows, path)
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size == curves.SIZE_PX
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_curves.png"]


def test_labelled_rows_fill_every_panel_with_percent_axes():
    fig = build_curves_figure(full_rows())
    retrieval = panel(fig, "retrieval")
    texts = legend_texts(retrieval)
    assert "mAP: 30.0%" in texts and "Rank-1: 52.0%" in texts
    assert "best mAP: 30.0% @ epoch 5" in texts
    assert retrieval.yaxis.get_major_formatter()(0.25, 0).endswith("%")
    assert "ARI: 55.0%" in legend_texts(panel(fig, "quality"))  # the None at epoch 2 is skipped, not plotted
    ari_line = next(line for line in panel(fig, "quality").get_lines() if line.get_label().startswith("ARI"))
    assert list(ari_line.get_xdata()) == [1, 3, 4, 5]
    assert "clusters: 350" in legend_texts(panel(fig, "counts"))
    assert "lr (right axis): 3.5e-5" in legend_texts(panel(fig, "losses"))
    assert panel(fig, "lr").get_ylim()[0] == 0.0
    assert_integer_epochs(fig)
    assert visible_ticks(retrieval, "x") == [0, 1, 2, 3, 4, 5]  # few evaluations: one tick each


def test_label_free_rows_draw_no_empty_panel_and_count_no_evaluation():
    fig = build_curves_figure(label_free_rows())
    assert panels(fig) == ["counts", "quality", "losses"]    # no empty retrieval frame
    assert "no evaluation" in fig._suptitle.get_text() and "7 evaluations" not in fig._suptitle.get_text()
    quality = legend_texts(panel(fig, "quality"))
    assert "clusters across cameras: 64.0%" in quality and "ARI vs previous epoch: 80.0%" in quality
    assert not any(t.startswith("precision") for t in quality)
    assert_integer_epochs(fig)


def test_single_row_gets_a_real_axis_and_one_integer_tick():
    fig = build_curves_figure(full_rows()[:1])
    retrieval = panel(fig, "retrieval")
    lo, hi = retrieval.get_xlim()
    assert lo < 0 < hi
    assert visible_ticks(retrieval, "x") == [0]
    ylo, yhi = retrieval.get_ylim()
    assert ylo < 0.01 and yhi > 0.3 and yhi - ylo < 1.0
    assert panels(fig) == ["retrieval"]  # row 0 has no losses or clusters: no empty panel for them
    assert "epoch 0, 1 evaluation" in fig._suptitle.get_text()


def test_the_title_counts_the_evaluations_that_happened():
    rows = full_rows()
    rows[3] = {k: v for k, v in rows[3].items() if k not in ("mAP", "rank1")}   # --eval-step skipped epoch 3
    fig = build_curves_figure(rows)
    assert "epochs 0-5, 5 evaluations" in fig._suptitle.get_text()
    assert panels(fig) == ["retrieval", "counts", "quality", "losses"]


def test_constant_series_get_a_non_degenerate_axis():
    rows = [{"epoch": e, "mAP": 0.5, "num_clusters": 10, "num_outliers": 10, "loss": 2.0, "loss_m": 2.0}
            for e in range(1, 5)]
    fig = build_curves_figure(rows)
    for name, value in (("retrieval", 0.5), ("counts", 10.0), ("losses", 2.0)):
        lo, hi = panel(fig, name).get_ylim()
        assert lo < value < hi, name
        assert hi - lo >= 0.02 * max(1.0, value), (name, lo, hi)
        assert len(visible_ticks(panel(fig, name), "y")) >= 3, name
    assert_integer_epochs(fig)


def test_many_epochs_use_round_integer_ticks():
    rows = [{"epoch": e, "mAP": 0.3, "loss": 1.0 / (e + 1)} for e in range(0, 120, 2)]
    ticks = visible_ticks(panel(build_curves_figure(rows), "losses"), "x")
    assert 3 <= len(ticks) <= 15 and all(float(t).is_integer() for t in ticks)


def test_bad_values_are_skipped_not_drawn():
    rows = [{"epoch": 1, "loss": "n/a"}, {"epoch": 2, "loss": math.nan}, {"epoch": 3, "loss": True},
            {"epoch": 4, "loss": 1.5}, {"loss": 9.0}]
    assert curves.series_points(rows, "loss") == ([4.0], [1.5])


@pytest.mark.parametrize("values,min_span", [([0.5], 0.02), ([3.0, 3.0], 0.3), ([0.0], 1e-3), ([1.0, 1.0], 0.02)])
def test_padded_limits_never_collapse_and_keep_the_data(values, min_span):
    lo, hi = padded_limits(values, min_span, lower=0.0, upper=1.0 if max(values) <= 1 else None)
    assert hi - lo >= min_span
    assert lo <= min(values) and hi >= max(values)


def test_padded_limits_do_not_invent_impossible_values():
    lo, hi = padded_limits([0.005], 0.02, lower=0.0, upper=1.0)
    assert lo == 0.0 and hi - lo >= 0.02  # the minimum span grows upwards, not below 0 %
    lo, hi = padded_limits([0.995], 0.02, lower=0.0, upper=1.0)
    assert hi == 1.0 and hi - lo >= 0.02
    lo, hi = padded_limits([0.0, 0.3], 0.02, lower=0.0, upper=1.0)
    assert lo < 0.0  # a value on the bound keeps its padding so its marker is not cut by the frame
