"""Parsing of the data set layouts on tiny generated trees (method.md section 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsgl_cli.data.datasets import MissingSplitError, dataset_root, load_dataset
from dsgl_cli.errors import DsglError
from tests.helpers import make_market_like, make_split, write_image


def test_market_layout_drops_junk_keeps_distractors_and_zero_bases_cameras(tmp_path: Path):
    root = make_market_like(tmp_path / "market1501" / "Market-1501-v15.09.15", train_ids=3, test_ids=2, cams=2)
    ds = load_dataset("market1501", tmp_path)
    assert len(ds.train) == 3 * 2 * 2
    assert {r.camid for r in ds.train} == {0, 1}
    assert {r.pid for r in ds.train} == {1, 2, 3}
    assert ds.splits["gallery"].junk == 2
    assert all(r.pid != -1 for r in ds.gallery)
    assert sum(r.pid == 0 for r in ds.gallery) == 2
    assert len(ds.query) == 2 * 2
    first = ds.train[0]
    assert Path(first.path).name == "0001_c1s1_000000_00.jpg" and (first.pid, first.camid) == (1, 0)
    assert ds.root == root


def test_msmt17_layout_reads_two_digit_cameras(tmp_path: Path):
    root = tmp_path / "msmt17" / "MSMT17_V1"
    make_market_like(root, train_ids=2, test_ids=2, cams=2)
    write_image(root / "bounding_box_train" / "0001_c15_0001.jpg", seed=3)
    ds = load_dataset("msmt17", tmp_path)
    assert any(r.camid == 14 for r in ds.train)
    assert dataset_root("msmt17", tmp_path) == root


def test_market_rejects_camera_out_of_range_and_misnamed_files(tmp_path: Path):
    root = tmp_path / "market1501" / "Market-1501-v15.09.15"
    make_market_like(root, train_ids=2, test_ids=2, cams=2)
    write_image(root / "bounding_box_train" / "0001_c7s1_000001_00.jpg", seed=1)   # camera 7 > 6
    write_image(root / "bounding_box_train" / "holiday.jpg", seed=2)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"\0")               # not an image: ignored
    ds = load_dataset("market1501", tmp_path)
    assert sorted(ds.splits["train"].misnamed) == ["0001_c7s1_000001_00.jpg", "holiday.jpg"]
    assert len(ds.train) == 2 * 2 * 2


def test_folder_layout_is_the_data_dir_itself(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2)
    ds = load_dataset("folder", tmp_path)
    assert ds.root == tmp_path and len(ds.train) == 8


def test_missing_split_names_the_exact_path_and_tree(tmp_path: Path):
    root = tmp_path / "market1501" / "Market-1501-v15.09.15"
    make_split(root / "bounding_box_train", [1], [1])
    with pytest.raises(MissingSplitError) as info:
        load_dataset("market1501", tmp_path)
    assert str(root / "query") in str(info.value) or str(root / "bounding_box_test") in str(info.value)
    assert "bounding_box_train" in info.value.tree and "query" in info.value.tree


def test_empty_split_is_an_error_when_required(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2, junk=False)
    for p in (tmp_path / "query").iterdir():
        p.unlink()
    with pytest.raises(DsglError, match="holds no image"):
        load_dataset("folder", tmp_path)
    assert load_dataset("folder", tmp_path, require_nonempty=False).query == []


def test_unknown_dataset_suggests(tmp_path: Path):
    with pytest.raises(DsglError, match="did you mean 'msmt17'") as info:
        load_dataset("msmt71", tmp_path)
    assert info.value.exit_code == 2
