"""Demo set sizes and parallel writing: the default set is unchanged, the market preset has Market-1501's
counts (from the plan alone), bytes do not depend on the number of workers, errors are one line."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsgl_cli.data import demo
from dsgl_cli.data.demo import store
from dsgl_cli.data.demo.plan import DemoPlan, plan_demo
from dsgl_cli.data.demo.render import render_image
from dsgl_cli.data.demo.sizes import DEFAULT_SIZE, MARKET_SIZE, DemoSize, preset, resolve_size
from dsgl_cli.data.demo.store import MARKER_NAME, demo_is_complete, generate_demo
from dsgl_cli.data.demo.totals import allocate
from dsgl_cli.data.demo.writer import JPEG_QUALITY, chunk_bounds
from dsgl_cli.errors import DsglError

FULL_NAME_RE = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
TINY = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, height=64, width=32)


def _plan_digest(plan: DemoPlan) -> str:
    h = hashlib.sha256()
    for s in plan.images:
        h.update(f"{s.split}|{s.pid}|{s.cam}|{s.name}|{s.kind}\n".encode())
    return h.hexdigest()


def _fields_digest(objs) -> str:
    h = hashlib.sha256()
    for o in objs:
        for f in dataclasses.fields(o):
            v = getattr(o, f.name)
            h.update(np.asarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    return h.hexdigest()


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


# ----------------------------------------------------------------------------- the default set is unchanged

# Taken from the generator before sizes and parallel writing existed (commit 5e21c02). If a NumPy,
# SciPy or Pillow upgrade trips these, the default set's bytes really changed: say so in the docs.
DEFAULT_PLAN_SHA = "9c42f275f97b3e37aa625d062eca38ff52514630216272a20aae31e703f3f084"
DEFAULT_IDENTITIES_SHA = "ddd7312fe32a04f2d2e990b82d2d5164e64e937cedcacec70bded9204effa469"
DEFAULT_CAMERAS_SHA = "3477f3bee1cdb1bb1415342290db5b556dbc6bb3076f3942b31ceeb30ad248b7"
DEFAULT_PIXELS_SHA = {  # index in plan.images -> (file name, sha256 of the rendered uint8 pixels)
    0: ("0001_c1s1_000006_03.jpg", "f01bef1936cc85a31a16ef3aac1a55b413d067d16303f936b9689ea73fcba43a"),
    701: ("0066_c1s3_003918_03.jpg", "4371a31cec0bfa6edceee8b034faf9682c7dba730446d7b1f97ffdd1a4a0dd8a"),
    858: ("0081_c1s4_005123_01.jpg", "5a563c22d280703fc493e0a68409723ded93c8bba57c18d115f8f8371849a404"),
    1379: ("0000_c1s6_008206_06.jpg", "432dafeadb5b38c3033d379cf7abc8496f861230779c60efbeb5eb5492b7c024"),
    1402: ("-1_c2s6_009105_07.jpg", "914e783a8c5e569df74b928aabde0a788ec3ce8ea8b104bd639ccf16b6f38ffa"),
}
SMALL_PLAN_SHA = "f02d7338a47de60055a37150cc17f2baa55d8c193d437f3208d535317b2e3ef5"  # seed 3, 12 + 8 ids, 3 cams


@pytest.mark.parametrize("make", [lambda: plan_demo(), lambda: plan_demo(size="default"),
                                  lambda: plan_demo(size=DEFAULT_SIZE), lambda: plan_demo(0, 80, 50, 4, 128, 64)])
def test_default_set_is_byte_for_byte_unchanged(make) -> None:
    plan = make()
    assert plan.size == DEFAULT_SIZE and plan.size.name == "default"
    assert plan.counts() == {"bounding_box_train": 858, "bounding_box_test": 396, "query": 149}
    assert _plan_digest(plan) == DEFAULT_PLAN_SHA
    assert _fields_digest(plan.identities[k] for k in sorted(plan.identities)) == DEFAULT_IDENTITIES_SHA
    assert _fields_digest(plan.cameras[k] for k in sorted(plan.cameras)) == DEFAULT_CAMERAS_SHA
    for i, (name, sha) in DEFAULT_PIXELS_SHA.items():
        assert plan.images[i].name == name
        assert hashlib.sha256(render_image(plan, plan.images[i]).tobytes()).hexdigest() == sha, name


def test_custom_configuration_plan_unchanged() -> None:
    assert _plan_digest(plan_demo(seed=3, num_train_ids=12, num_test_ids=8, num_cameras=3)) == SMALL_PLAN_SHA


# ----------------------------------------------------------------------------- presets


def test_presets_and_unknown_name() -> None:
    assert preset("default") is DEFAULT_SIZE and preset(" Market ") is MARKET_SIZE
    with pytest.raises(DsglError) as info:
        preset("huge")
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert "'huge'" in message and "default, market" in message


def test_unknown_size_leaves_the_folder_alone(tmp_path: Path) -> None:
    with pytest.raises(DsglError, match="unknown demo size 'msmt'"):
        generate_demo(tmp_path / "demo", size="msmt")
    assert not (tmp_path / "demo").exists()


def test_overrides_make_a_custom_size() -> None:
    assert resolve_size("default", num_train_ids=80) is DEFAULT_SIZE  # same value: still the preset
    custom = resolve_size("default", num_cameras=3)
    assert custom.name == "custom" and custom.num_cameras == 3 and custom.num_train_ids == 80
    assert plan_demo(num_cameras=3).size == custom


def test_partial_totals_are_a_usage_error() -> None:
    half = DemoSize("half", 10, 10, 3, train_images=100)
    with pytest.raises(DsglError, match="together") as info:
        plan_demo(size=half)
    assert info.value.exit_code == 2


def test_infeasible_totals_are_a_usage_error() -> None:
    with pytest.raises(DsglError, match="query images") as info:
        plan_demo(size="market", num_cameras=4)  # 3,368 queries cannot come from 750 ids x 4 cameras
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


@pytest.mark.parametrize("seed", range(6))
def test_allocate_hits_the_total_within_bounds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    low = rng.integers(0, 5, n)
    high = int(rng.integers(5, 40))
    total = int(rng.integers(low.sum(), n * high + 1))
    spread = float(rng.uniform(0, 1.5))
    counts = allocate(np.random.default_rng([seed, 1]), total, low, high, spread, "test")
    assert counts.sum() == total and (counts >= low).all() and (counts <= high).all()
    assert np.array_equal(counts, allocate(np.random.default_rng([seed, 1]), total, low, high, spread, "test"))
    with pytest.raises(DsglError):
        allocate(rng, n * high + 1, low, high, 0.5, "test")


# ----------------------------------------------------------------------------- the market preset (plan only)


@pytest.fixture(scope="module")
def market() -> DemoPlan:
    return plan_demo(size="market")


def test_market_counts_match_market1501(market: DemoPlan) -> None:
    counts = market.counts()
    kinds = Counter(s.kind for s in market.images)
    assert counts == {"bounding_box_train": 12_936, "bounding_box_test": 16_038, "query": 3_368}
    assert kinds["distractor"] == 2_793 and kinds["junk"] == 125
    assert counts["bounding_box_test"] - kinds["junk"] == 15_913  # what the loader keeps, as Market's release
    assert (market.height, market.width, market.num_cameras) == (128, 64, 6)
    assert market.size is MARKET_SIZE
    ids = {split: {s.pid for s in market.images if s.split == split} for split in counts}
    assert ids["bounding_box_train"] == set(range(1, 752))
    assert ids["query"] == set(range(752, 1502))
    assert ids["bounding_box_test"] == ids["query"] | {0, -1}
    assert {s.cam for s in market.images} == set(range(1, 7))


def test_market_structure(market: DemoPlan) -> None:
    names = [(s.split, s.name) for s in market.images]
    assert len(set(names)) == len(names)
    assert all(FULL_NAME_RE.match(name) for _, name in names)
    train, query, gallery = defaultdict(list), defaultdict(list), defaultdict(list)
    for s in market.images:
        {"bounding_box_train": train, "query": query, "bounding_box_test": gallery}[s.split][s.pid].append(s.cam)
    assert all(2 <= len(set(c)) <= 6 and len(c) <= 72 for c in train.values())
    per_id = np.array([len(c) for c in train.values()])
    assert per_id.std() > 5  # skewed like real footage, not a constant
    for pid, cams in query.items():
        assert len(cams) == len(set(cams)) and 2 <= len(cams) <= 6  # one query per camera
        got = Counter(gallery[pid])
        assert set(got) == set(cams) and all(got[c] >= 2 for c in cams)


# ----------------------------------------------------------------------------- parallel writing


def test_bytes_do_not_depend_on_workers(tmp_path: Path) -> None:
    one = generate_demo(tmp_path / "one", seed=5, workers=1, **TINY)
    two = generate_demo(tmp_path / "two", seed=5, workers=2, chunk_size=5, **TINY)
    assert one.workers == 1 and two.workers == 2
    assert _bytes(one.root) == _bytes(two.root) and len(_bytes(one.root)) == one.num_images
    assert (one.root / MARKER_NAME).read_text() == (two.root / MARKER_NAME).read_text()
    plan = plan_demo(seed=5, **TINY)  # and both equal the plain single-image encoder
    for spec in plan.images[::7]:
        buf = io.BytesIO()
        Image.fromarray(render_image(plan, spec)).save(buf, format="JPEG", quality=JPEG_QUALITY)
        assert (two.root / spec.split / spec.name).read_bytes() == buf.getvalue()


def test_chunks_cover_every_image_once() -> None:
    for total, workers, size in ((1403, 2, None), (32342, 16, None), (52, 2, 5), (1, 4, None)):
        bounds = chunk_bounds(total, workers, size)
        assert [i for a, b in bounds for i in range(a, b)] == list(range(total))
        assert all(b - a <= 64 for a, b in bounds)


def test_worker_error_is_one_line_dsgl_error(tmp_path: Path, monkeypatch) -> None:
    real = store.plan_demo

    def broken(*args, **kwargs) -> DemoPlan:  # one file name points into a folder that does not exist
        plan = real(*args, **kwargs)
        plan.images[-3] = dataclasses.replace(plan.images[-3], name="no_such_folder/x.jpg")
        return plan

    monkeypatch.setattr(store, "plan_demo", broken)
    root = tmp_path / "demo"
    with pytest.raises(DsglError) as info:
        generate_demo(root, seed=1, workers=2, chunk_size=4, **TINY)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not write the demo data set under {root}")
    assert isinstance(info.value.__cause__, OSError)
    assert not (root / MARKER_NAME).exists() and not demo_is_complete(root)


class _KillsWorker:
    """A planned image whose unpickling ends the worker process, as an out-of-memory kill would."""

    pid, split, name = 1, "query", "never.jpg"

    def __reduce__(self):
        return (os._exit, (3,))


def test_dead_worker_is_one_line_dsgl_error(tmp_path: Path, monkeypatch) -> None:
    real = store.plan_demo

    def deadly(*args, **kwargs) -> DemoPlan:
        plan = real(*args, **kwargs)
        plan.images[-3] = _KillsWorker()  # type: ignore[call-overload]
        return plan

    monkeypatch.setattr(store, "plan_demo", deadly)
    root = tmp_path / "demo"
    with pytest.raises(DsglError, match="worker process died") as info:
        generate_demo(root, seed=1, workers=2, chunk_size=4, **TINY)
    assert "\n" not in str(info.value) and not demo_is_complete(root)


def test_interrupt_with_workers_leaves_an_incomplete_set(tmp_path: Path) -> None:
    root = tmp_path / "demo"

    def stop_early(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demo(root, seed=4, workers=2, chunk_size=3, progress=stop_early, **TINY)
    written = len(list(root.rglob("*.jpg")))
    time.sleep(0.5)
    assert len(list(root.rglob("*.jpg"))) == written  # no worker still writing
    assert not (root / MARKER_NAME).exists() and not demo_is_complete(root)
    summary = generate_demo(root, seed=4, workers=1, **TINY)
    assert demo_is_complete(root, seed=4) and len(list(root.rglob("*.jpg"))) == summary.num_images


def test_bad_worker_count_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(DsglError) as info:
        generate_demo(tmp_path / "demo", workers=0, **TINY)
    assert info.value.exit_code == 2 and not (tmp_path / "demo").exists()


def test_refuses_inside_a_starting_worker(tmp_path: Path, monkeypatch) -> None:
    """An unguarded script re-run by "spawn" in a new worker must not clear the folder being written."""
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(DsglError, match="__main__"):
        generate_demo(tmp_path / "demo", **TINY)
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------- the marker knows the size


def test_marker_tells_sizes_apart(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    summary = generate_demo(root, seed=2, **TINY)
    tiny = resolve_size("default", **TINY)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["preset"] == summary.preset == "custom" and marker["size"] == tiny.key()
    assert demo_is_complete(root) and demo_is_complete(root, seed=2, size=tiny)
    assert not demo_is_complete(root, size="default") and not demo_is_complete(root, size="market")

    # The same files under a marker claiming the market size: only the market check passes.
    (root / MARKER_NAME).write_text(json.dumps({**marker, "preset": "market", "size": MARKET_SIZE.key()}))
    assert demo_is_complete(root, size="market") and demo_is_complete(root, size=MARKET_SIZE)
    assert not demo_is_complete(root, size="default")

    # A marker from before sizes existed (no "preset" / "size") reads by its basic fields.
    old = {k: v for k, v in marker.items() if k not in ("preset", "size")}
    (root / MARKER_NAME).write_text(json.dumps(old))
    assert demo_is_complete(root, size=tiny) and not demo_is_complete(root, size="market")
    defaults = {"num_train_ids": 80, "num_test_ids": 50, "num_cameras": 4, "height": 128, "width": 64}
    (root / MARKER_NAME).write_text(json.dumps({**old, **defaults}))
    assert demo_is_complete(root, size="default") and not demo_is_complete(root, size="market")


def test_ensure_demo_regenerates_at_another_size(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    tiny = resolve_size("default", **TINY)
    demo.ensure_demo(root, seed=1, size=tiny, workers=1)
    assert demo_is_complete(root, seed=1, size=tiny)
    stamp = (root / MARKER_NAME).stat().st_mtime_ns
    demo.ensure_demo(root, seed=1, size=tiny)  # complete: left alone
    demo.ensure_demo(root)  # no size asked: any complete set counts, as before sizes existed
    assert (root / MARKER_NAME).stat().st_mtime_ns == stamp
    smaller = dataclasses.replace(tiny, num_test_ids=1)
    demo.ensure_demo(root, seed=1, size=smaller, workers=1)
    assert demo_is_complete(root, size=smaller) and not demo_is_complete(root, size=tiny)
