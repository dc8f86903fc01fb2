"""Ranked-list pictures: files, sizes, frame colours that say match / no match, captions and legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation import ranked_lists as vis
from dsgl_cli.evaluation.ranked_lists import camera_label, plan_ranked_lists, query_file_name, save_ranked_lists


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
    w12, h12 = vis.panel_size(12)
    cell = vis.CELL_W + 2 * vis.FRAME
    assert h == h12 == (2 * vis.MARGIN + vis.TITLE_H + vis.LEGEND_H + vis.LABEL_H + vis.CELL_H + 2 * vis.FRAME
                        + vis.CAPTION_H)
    assert w12 - w10 == 2 * (cell + vis.GAP)
    # the last cell ends exactly one margin before the right edge
    x_last, _ = vis.cell_origin(10)
    assert x_last + cell + vis.MARGIN == w10
    # a short list keeps room for its title and legend
    assert vis.panel_size(1)[0] == vis.MIN_WIDTH > vis.cell_origin(1)[0] + cell + vis.MARGIN


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


def test_ranking_and_filtering_equal_a_plain_loop_on_random_distances(tmp_path):
    rng = np.random.default_rng(3)
    q, g = 12, 60
    qp, gp = rng.integers(0, 6, q), rng.integers(0, 6, g)
    qc, gc = rng.integers(0, 3, q), rng.integers(0, 3, g)
    gp_known = gp.astype(object)
    gp_known[rng.random(g) < 0.2] = None  # some gallery images nobody labelled: never dropped
    dist = rng.random((q, g)).astype(np.float32)
    dist[:, ::7] = dist[:, :1]  # some exact ties: broken by gallery index
    paths_q = [f"/nowhere/q{i}.jpg" for i in range(q)]
    paths_g = [f"/nowhere/g{j}.jpg" for j in range(g)]
    plans = plan_ranked_lists(dist, paths_q, paths_g, qp, gp_known, qc, gc, num_queries=q, topk=15)
    assert [p.query_index for p in plans] == list(range(q))
    for plan in plans:
        i = plan.query_index
        keep = [j for j in range(g) if not (gp_known[j] is not None and gp_known[j] == qp[i] and gc[j] == qc[i])]
        keep.sort(key=lambda j: (dist[i, j], j))
        want = keep[:15]
        assert [c.image for c in plan.cells[1:]] == [paths_g[j] for j in want], i
        kinds = ["unknown" if gp_known[j] is None else "match" if gp_known[j] == qp[i] else "wrong" for j in want]
        assert [c.kind for c in plan.cells[1:]] == kinds, i
        assert [c.captions[2] for c in plan.cells[1:]] == [f"d {dist[i, j]:.3f}" for j in want]
        dropped = g - len(keep)
        assert f"top 15 of {len(keep)} gallery images" in plan.subtitle and f"{dropped} left out" in plan.subtitle


def test_cells_say_camera_id_and_distance_and_the_legend_is_drawn(scene, tmp_path):
    plan = plan_ranked_lists(**scene, num_queries=1, topk=5, seed=2)[0]
    qi = plan.query_index
    query = plan.cells[0]
    assert (query.header, query.kind) == ("query", "query")
    assert query.captions == (f"c{scene['query_camids'][qi] + 1}", f"id {scene['query_pids'][qi]}")
    assert [c.header for c in plan.cells[1:]] == ["#1", "#2", "#3", "#4", "#5"]
    for cell in plan.cells[1:]:
        j = scene["gallery_paths"].index(Path(cell.image))
        assert cell.captions[:2] == (f"c{scene['gallery_camids'][j] + 1}", f"id {scene['gallery_pids'][j]}")
        assert cell.captions[2].startswith("d ")
    assert plan.legend == ("query", "match", "wrong")
    assert plan.title == "Ranked list by plain distance"
    assert "re-ranked" in plan_ranked_lists(**scene, num_queries=1, reranked=True)[0].title

    (path,) = save_ranked_lists(**scene, out_dir=tmp_path / "legend", num_queries=1, topk=5, seed=2)
    with Image.open(path) as img:
        img = img.convert("RGB")
        for kind, (x, y) in zip(plan.legend, vis.legend_layout(plan.legend)):
            assert img.getpixel((x + vis.SWATCH // 2, y + vis.SWATCH // 2)) == vis.KIND_COLOURS[kind], kind
        # text was drawn in the caption strip under the first result and in the title
        x, y = vis.cell_origin(1)
        strip = img.crop((x, y + vis.CELL_H + 2 * vis.FRAME, x + vis.CELL_W, y + vis.CELL_H + 2 * vis.FRAME + 40))
        assert strip.convert("L").getextrema()[0] < 128
        assert img.crop((0, 0, img.width, vis.MARGIN + 20)).convert("L").getextrema()[0] < 128


def test_file_names_carry_the_query_image_name(scene, tmp_path):
    paths = save_ranked_lists(**scene, out_dir=tmp_path / "names", num_queries=3, seed=4)
    for path in paths:
        qi = int(path.stem.split("_")[1])
        assert path.name == f"query_{qi:05d}_{scene['query_paths'][qi].stem}.png"
    assert query_file_name(12, "/data/query/0002_c1s1_000451_03.jpg") == "query_00012_0002_c1s1_000451_03.png"
    assert query_file_name(3, "/d/a b/ü (1)#x.png") == "query_00003_1_x.png"
    assert query_file_name(4, "/d/...jpg") == "query_00004_image.png"
    assert len(query_file_name(5, "x" * 300 + ".jpg")) < 100


@pytest.mark.parametrize("unknown", [None, -1])
def test_unlabelled_gallery_gets_neutral_frames_and_nothing_dropped(scene, tmp_path, unknown):
    unlabelled = dict(scene, query_pids=[unknown] * 6, gallery_pids=np.full(25, -1) if unknown == -1 else [None] * 25)
    paths = save_ranked_lists(**unlabelled, out_dir=tmp_path / "u", num_queries=2, topk=30)
    plans = plan_ranked_lists(**unlabelled, num_queries=2, topk=30)
    for path, plan in zip(paths, plans):
        assert plan.legend == ("query", "unknown") and "nothing left out" in plan.subtitle
        order = np.argsort(scene["distmat"][plan.query_index], kind="stable")
        assert [c.image for c in plan.cells[1:]] == [str(scene["gallery_paths"][j]) for j in order]  # all 25
        assert all(c.captions[1] == "" for c in plan.cells)  # no invented id
        with Image.open(path) as img:
            img = img.convert("RGB")
            assert img.size == vis.panel_size(25)
            assert frame_colour(img, 0) == vis.QUERY_COLOUR
            assert {frame_colour(img, k) for k in range(1, 26)} == {vis.NEUTRAL_COLOUR}


def test_camera_labels_match_file_names():
    assert [camera_label(c) for c in (0, 5, np.int64(1), None, -1, "entrance")] == ["c1", "c6", "c2", "c?", "c?",
                                                                                   "entrance"]


def test_bad_ids_are_one_line_errors(scene, tmp_path):
    with pytest.raises(DsglError, match="ids must be integers") as err:
        plan_ranked_lists(**dict(scene, query_pids=["a"] * 6))
    assert "\n" not in str(err.value)
    with pytest.raises(DsglError, match="positive number"):
        plan_ranked_lists(**scene, topk=0)
