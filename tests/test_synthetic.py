"""The built-in synthetic demo set: Market-1501 layout, naming, splits, determinism, styles, marker."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsgl_cli.data.demo import render
from dsgl_cli.data.demo.plan import SPLITS, plan_demo
from dsgl_cli.data.demo.render import render_image
from dsgl_cli.data.demo.store import MARKER_NAME, DemoSummary, demo_is_complete, generate_demo
from dsgl_cli.errors import DsglError

MARKET_RE = re.compile(r"([-\d]+)_c(\d)")  # method.md section 1
FULL_NAME_RE = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(num_train_ids=12, num_test_ids=8, num_cameras=3)
TINY = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, height=64, width=32)


def _index(root: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """(pid, cam, path) of every jpg per split, parsed with the Market regex."""
    out: dict[str, list[tuple[int, int, Path]]] = {}
    for split in SPLITS:
        rows = []
        for path in sorted((root / split).iterdir()):
            m = MARKET_RE.search(path.name)
            assert m is not None, path.name
            rows.append((int(m.group(1)), int(m.group(2)), path))
        out[split] = rows
    return out


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[DemoSummary, dict[str, list[tuple[int, int, Path]]]]:
    root = tmp_path_factory.mktemp("demo") / "demo"
    summary = generate_demo(root, seed=3, **SMALL)
    return summary, _index(root)


def test_layout_names_and_counts(small) -> None:
    summary, index = small
    root = summary.root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SPLITS)
    for split in SPLITS:
        names = [p.name for _, _, p in index[split]]
        assert all(FULL_NAME_RE.match(n) for n in names), names[:5]
        assert len(set(names)) == len(names)
        assert all(1 <= cam <= SMALL["num_cameras"] for _, cam, _ in index[split])
        assert summary.counts[split] == len(names)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["counts"] == summary.counts and marker["seed"] == 3
    assert summary.num_images == sum(summary.counts.values())
    assert summary.seconds > 0


def test_ids_disjoint_and_numbered_after_train(small) -> None:
    _, index = small
    train_ids = {pid for pid, _, _ in index["bounding_box_train"]}
    query_ids = {pid for pid, _, _ in index["query"]}
    gallery_ids = {pid for pid, _, _ in index["bounding_box_test"]} - {0, -1}
    n_train, n_test = SMALL["num_train_ids"], SMALL["num_test_ids"]
    assert train_ids == set(range(1, n_train + 1))
    assert query_ids == gallery_ids == set(range(n_train + 1, n_train + n_test + 1))
    assert not train_ids & gallery_ids


def test_every_id_seen_by_two_cameras(small) -> None:
    _, index = small
    train = defaultdict(list)
    for pid, cam, _ in index["bounding_box_train"]:
        train[pid].append(cam)
    for pid, cams in train.items():
        assert 8 <= len(cams) <= 14, (pid, cams)
        assert len(set(cams)) >= 2, (pid, cams)
    query = defaultdict(list)
    for pid, cam, _ in index["query"]:
        query[pid].append(cam)
    gallery = defaultdict(list)
    for pid, cam, _ in index["bounding_box_test"]:
        gallery[pid].append(cam)
    for pid, cams in query.items():
        assert len(cams) == len(set(cams)) >= 2, (pid, cams)  # one query per camera
        assert set(gallery[pid]) == set(cams)
        assert len(gallery[pid]) >= 2 * len(cams)
        # Every query has a true match in another camera, so evaluation (method.md 6) uses it.
        assert all(any(g != c for g in gallery[pid]) for c in cams)


def test_distractors_and_junk_only_in_gallery(small) -> None:
    summary, index = small
    gallery_ids = [pid for pid, _, _ in index["bounding_box_test"]]
    assert gallery_ids.count(0) == summary.num_distractors >= 3
    assert gallery_ids.count(-1) == summary.num_junk >= 2
    assert any(p.name.startswith("-1_c") for _, _, p in index["bounding_box_test"])
    for split in ("bounding_box_train", "query"):
        assert all(pid > 0 for pid, _, _ in index[split])


def test_images_are_jpeg_rgb_at_most_128x64(small) -> None:
    _, index = small
    for split in SPLITS:
        for _, _, path in index[split]:
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (64, 128)  # (W, H)


def test_camera_styles_differ_measurably(small) -> None:
    """Mean colour per camera differs by far more than its own spread across identities."""
    _, index = small
    per_cam = defaultdict(list)
    for _, cam, path in index["bounding_box_train"]:
        per_cam[cam].append(np.asarray(Image.open(path), np.float32).mean(axis=(0, 1)))
    means = {c: np.mean(v, axis=0) for c, v in per_cam.items()}
    sems = {c: np.std(v, axis=0).max() / np.sqrt(len(v)) for c, v in per_cam.items()}
    cams = sorted(means)
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            gap = np.linalg.norm(means[a] - means[b])
            assert gap > 6.0, (a, b, gap)
            assert gap > 3 * (sems[a] + sems[b]), (a, b, gap)


def test_identity_and_camera_both_visible_in_raw_pixels(small) -> None:
    """Nearest neighbours in raw 16x8 pixels: well above chance on identity, and camera-biased."""
    _, index = small
    rows = index["bounding_box_train"]
    x = np.stack([np.asarray(Image.open(p).resize((8, 16), Image.BILINEAR), np.float32).ravel() for _, _, p in rows])
    x -= x.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pid = np.array([r[0] for r in rows])
    cam = np.array([r[1] for r in rows])
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(axis=1)
    same_id = (pid[nn] == pid).mean()
    same_cam = (cam[nn] == cam).mean()
    assert same_id > 3.0 / SMALL["num_train_ids"], same_id
    assert same_id < 0.995, same_id  # not trivially solved by pixels
    assert same_cam > 1.5 / SMALL["num_cameras"], same_cam


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", seed=5, **TINY)
    b = generate_demo(tmp_path / "b", seed=5, **TINY)
    c = generate_demo(tmp_path / "c", seed=6, **TINY)
    bytes_a, bytes_b, bytes_c = _bytes(a.root), _bytes(b.root), _bytes(c.root)
    assert bytes_a == bytes_b and len(bytes_a) == a.num_images
    assert (a.root / MARKER_NAME).read_text() == (b.root / MARKER_NAME).read_text()
    assert not set(bytes_a.values()) & set(bytes_c.values())  # no image repeats across seeds


def test_rendering_order_does_not_matter() -> None:
    """Each image's generator is seeded by its own name, so reversed order gives equal pixels."""
    plan = plan_demo(seed=2, **TINY)
    forward = [render_image(plan, spec) for spec in plan.images]
    render._camera_backdrop.cache_clear()
    backward = [render_image(plan, spec) for spec in reversed(plan.images)][::-1]
    assert all(np.array_equal(f, b) for f, b in zip(forward, backward))
    assert forward[0].shape == (64, 32, 3) and forward[0].dtype == np.uint8


def test_marker_is_written_last(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        assert not (root / MARKER_NAME).exists()
        assert not demo_is_complete(root)

    summary = generate_demo(root, seed=1, progress=progress, **TINY)
    total = summary.num_images
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert demo_is_complete(root) and demo_is_complete(root, seed=1)
    assert not demo_is_complete(root, seed=2)
    marker_time = (root / MARKER_NAME).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker_time for p in root.rglob("*.jpg"))
    next(root.joinpath("query").iterdir()).unlink()
    assert not demo_is_complete(root)


def test_interrupted_run_is_incomplete_and_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "demo"

    def stop_early(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demo(root, seed=4, progress=stop_early, **TINY)
    assert not demo_is_complete(root)
    (root / "query" / "0009_c1s1_000001_01.jpg").write_bytes(b"stale")  # a leftover from elsewhere
    summary = generate_demo(root, seed=4, **TINY)
    assert demo_is_complete(root, seed=4)
    fresh = generate_demo(tmp_path / "fresh", seed=4, **TINY)
    assert _bytes(root) == _bytes(fresh.root)
    assert summary.counts == fresh.counts


def test_refuses_to_overwrite_foreign_images(tmp_path: Path) -> None:
    root = tmp_path / "market"
    (root / "query").mkdir(parents=True)
    (root / "query" / "0001_c1s1_000151_01.jpg").write_bytes(b"someone else's image")
    with pytest.raises(DsglError, match="not a dsgl demo set"):
        generate_demo(root, **TINY)
    assert (root / "query" / "0001_c1s1_000151_01.jpg").read_bytes() == b"someone else's image"


def test_default_configuration_plan() -> None:
    """The default set (planned, not written): 80 + 50 ids, 4 cameras, ~1,000-2,000 images."""
    plan = plan_demo()
    counts = plan.counts()
    total = sum(counts.values())
    assert 1000 <= total <= 2000, counts
    assert 80 * 8 <= counts["bounding_box_train"] <= 80 * 14
    assert {s.pid for s in plan.images if s.split == "bounding_box_train"} == set(range(1, 81))
    assert {s.pid for s in plan.images if s.split == "query"} == set(range(81, 131))
    assert 100 <= counts["query"] <= 200
    assert {s.cam for s in plan.images} == {1, 2, 3, 4}
    kinds = [s.kind for s in plan.images]
    assert kinds.count("distractor") == 16 and kinds.count("junk") == 8
    assert len({(s.split, s.name) for s in plan.images}) == total
    assert all(FULL_NAME_RE.match(s.name) for s in plan.images)
    assert plan_demo().images == plan.images  # planning is deterministic too
    assert plan.height == 128 and plan.width == 64


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_cameras=10), dict(num_cameras=1), dict(height=256), dict(width=128), dict(num_train_ids=1),
     dict(num_train_ids=9990, num_test_ids=10), dict(seed=-1)],
)
def test_bad_configuration_is_a_usage_error(kwargs: dict) -> None:
    with pytest.raises(DsglError) as info:
        plan_demo(**kwargs)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
