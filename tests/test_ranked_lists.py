"""Ranked-list pictures: files, sizes, and frame colours that say match / no match."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation import save_ranked_lists
from dsgl_cli.evaluation import ranked_lists as vis


def write_images(folder, count, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"{prefix}_{i}.jpg"
        Image.new("RGB", (30 + i % 5, 70), (40 + 7 * i % 200, 120, 200)).save(p)
        paths.append(p)
    return paths


@pytest.fixture()
def scene(tmp_path):
    rng = np.random.default_rng(0)
    q, g = 6, 25
    qp = rng.integers(1, 5, q)
    gp = rng.integers(0, 5, g)
    qc = rng.integers(0, 2, q)
    gc = rng.integers(0, 2, g)
    dist = rng.integers(0, 4, (q, g)).astype(np.float32)  # ties: ranks follow gallery order
    return dict(
        distmat=dist,
        query_paths=write_images(tmp_path / "query", q, "q"),
        gallery_paths=write_images(tmp_path / "gallery", g, "g"),
        query_pids=qp,
        gallery_pids=gp,
        query_camids=qc,
        gallery_camids=gc,
    )


def frame_colour(img, slot):
    x, y = vis.cell_origin(slot)
    return img.getpixel((x + 1, y + 1))


def expected_ranking(scene, qi, topk):
    qp, gp = scene["query_pids"], scene["gallery_pids"]
    qc, gc = scene["query_camids"], scene["gallery_camids"]
    keep = [j for j in range(len(gp)) if not (gp[j] == qp[qi] and gc[j] == qc[qi])]
    keep.sort(key=lambda j: (scene["distmat"][qi, j], j))
    return [bool(gp[j] == qp[qi]) for j in keep[:topk]]


def test_writes_one_png_per_query_with_right_size_and_frames(scene, tmp_path):
    out = tmp_path / "show"
    paths = save_ranked_lists(**scene, out_dir=out, num_queries=4, topk=10, seed=1)
    assert len(paths) == 4 and len(set(paths)) == 4
    for path in paths:
        assert path.parent == out and path.suffix == ".png" and path.exists()
        qi = int(path.stem.split("_")[1])
        with Image.open(path) as img:
            img = img.convert("RGB")
            assert img.size == vis.panel_size(10)
            assert frame_colour(img, 0) == vis.QUERY_COLOUR
            for rank, hit in enumerate(expected_ranking(scene, qi, 10), start=1):
                want = vis.MATCH_COLOUR if hit else vis.MISMATCH_COLOUR
                assert frame_colour(img, rank) == want, (qi, rank)


def test_panel_geometry():
    w10, h = vis.panel_size(10)
    w3, h3 = vis.panel_size(3)
    cell = vis.CELL_W + 2 * vis.FRAME
    assert h == h3 == 2 * vis.MARGIN + vis.LABEL_H + vis.CELL_H + 2 * vis.FRAME
    assert w10 - w3 == 7 * (cell + vis.GAP)
    # the last cell ends exactly one margin before the right edge
    x_last, _ = vis.cell_origin(10)
    assert x_last + cell + vis.MARGIN == w10


def test_short_gallery_and_more_queries_than_exist(scene, tmp_path):
    paths = save_ranked_lists(**scene, out_dir=tmp_path / "all", num_queries=50, topk=40)
    assert len(paths) == 6  # every query once
    for path in paths:
        qi = int(path.stem.split("_")[1])
        shown = len(expected_ranking(scene, qi, 40))
        with Image.open(path) as img:
            assert img.size == vis.panel_size(shown)


def test_same_seed_same_queries(scene, tmp_path):
    a = save_ranked_lists(**scene, out_dir=tmp_path / "a", num_queries=3, seed=7)
    b = save_ranked_lists(**scene, out_dir=tmp_path / "b", num_queries=3, seed=7)
    assert [p.name for p in a] == [p.name for p in b]


def test_missing_image_and_bad_lengths(scene, tmp_path):
    broken = dict(scene, gallery_paths=[tmp_path / "nope.jpg"] * 25)
    with pytest.raises(DsglError, match="cannot read image"):
        save_ranked_lists(**broken, out_dir=tmp_path / "x")
    with pytest.raises(DsglError, match="image paths"):
        save_ranked_lists(**dict(scene, query_paths=scene["query_paths"][:2]), out_dir=tmp_path / "y")
