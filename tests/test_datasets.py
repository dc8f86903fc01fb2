"""Parsing of the data set layouts on tiny generated trees (method.md section 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dsgl_cli.data.datasets import (
    CAMERAS,
    MANIFEST,
    MARKET,
    MissingSplitError,
    dataset_root,
    load_dataset,
)
from dsgl_cli.data.splits import UNLABELLED
from dsgl_cli.errors import DsglError
from tests.helpers import make_camera_folders, make_market_like, make_split, write_image, write_manifest


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


# ----- -d folder: a user's own data as it is -------------------------------------------------------
def test_camera_folders_name_the_cameras_in_natural_order_and_read_every_mode(tmp_path: Path):
    written = make_camera_folders(tmp_path / "cams")
    (tmp_path / "cams" / "gate-2" / "notes.txt").write_text("shift log")
    write_image(tmp_path / "cams" / "stray.jpg", seed=1)
    ds = load_dataset("folder", tmp_path / "cams")
    assert ds.layout == CAMERAS and ds.name == "folder"
    assert ds.cameras == ("entrance", "gate-2", "gate-10", "Lobby east")       # natural order: 2 before 10
    assert sorted(r.path for r in ds.train) == sorted(written)                 # nested, .png and .webp included
    assert {Path(r.path).suffix for r in ds.train} == {".jpg", ".png", ".webp"}
    assert all(written[r.path][0] == ds.camera_name(r.camid) for r in ds.train)
    assert {r.camid for r in ds.train} == {0, 1, 2, 3} and {r.pid for r in ds.train} == {UNLABELLED}
    assert not ds.labelled("train") and not ds.has_evaluation_splits and list(ds.splits) == ["train"]
    assert ds.splits["train"].num_ids == 0
    assert dict(ds.skipped) == {str(tmp_path / "cams" / "gate-2" / "notes.txt"): "not an image file (.txt)",
                                str(tmp_path / "cams" / "stray.jpg"): "not inside a camera folder"}
    assert ds.camera_caption(2) == "gate-10"
    with pytest.raises(DsglError, match="no query and gallery with person ids, which mAP needs"):
        ds.query  # noqa: B018 - evaluation asks for it and must be told what is missing


def test_an_empty_camera_folder_is_one_clear_error(tmp_path: Path):
    make_camera_folders(tmp_path, people=1, per_camera=1)
    (tmp_path / "yard" / "2024").mkdir(parents=True)
    (tmp_path / "yard" / "2024" / "readme.txt").write_text("x")
    with pytest.raises(DsglError, match=r"camera folder .*yard holds no image \(1 other file\(s\), none an image\)"):
        load_dataset("folder", tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "it holds no image folder"),
    (lambda d: write_image(d / "a.jpg", seed=1), "its 1 image(s) lie directly in it"),
])
def test_a_folder_of_no_known_layout_says_what_to_do(tmp_path: Path, make, message):
    make(tmp_path)
    with pytest.raises(DsglError, match="sub-folder named after the camera") as info:
        load_dataset("folder", tmp_path)
    assert message in str(info.value)


def test_missing_data_dir_is_a_usage_error(tmp_path: Path):
    with pytest.raises(DsglError, match="does not exist") as info:
        load_dataset("folder", tmp_path / "nowhere")
    assert info.value.exit_code == 2


def test_market_names_keep_junk_semantics_read_webp_and_name_the_cameras(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=3)
    Image.new("RGB", (16, 32), (9, 9, 9)).save(tmp_path / "bounding_box_train" / "0001_c2s1_000777_00.webp")
    (tmp_path / "bounding_box_train" / "Thumbs.db").write_bytes(b"\0")
    ds = load_dataset("folder", tmp_path)
    assert ds.layout == MARKET and ds.cameras == ("1", "2", "3") and ds.has_evaluation_splits
    assert any(r.path.endswith(".webp") for r in ds.train)
    assert ds.skipped == [(str(tmp_path / "bounding_box_train" / "Thumbs.db"), "not an image file (.db)")]
    assert ds.splits["gallery"].junk == 2 and all(r.pid >= 0 for r in ds.gallery)
    assert ds.camera_caption(0) == "c1" and ds.camera_name(0) == "1"


def test_market_named_train_folder_alone_is_a_train_only_data_set(tmp_path: Path):
    make_split(tmp_path / "bounding_box_train", [1, 2], [1, 2])
    ds = load_dataset("folder", tmp_path)
    assert list(ds.splits) == ["train"] and ds.labelled("train") and not ds.has_evaluation_splits
    make_split(tmp_path / "query", [3], [1])
    with pytest.raises(MissingSplitError, match="bounding_box_test"):
        load_dataset("folder", tmp_path)


def test_manifest_without_person_or_split_is_an_unlabelled_train_split(tmp_path: Path):
    write_image(tmp_path / "img" / "a.jpg", seed=1)
    write_image(tmp_path / "img" / "deep" / "b.png", seed=2)
    Image.new("CMYK", (16, 32)).save(tmp_path / "img" / "c.jpg")
    manifest = write_manifest(tmp_path / "list.csv", [("img/a.jpg", "cam10"), ("img/deep/b.png", "cam2"),
                                                      ("img/c.jpg", "cam2")])
    ds = load_dataset("folder", manifest)
    assert ds.layout == MANIFEST and ds.cameras == ("cam2", "cam10") and ds.root == manifest
    assert [(Path(r.path).name, r.pid, r.camid) for r in ds.train] == [("a.jpg", -1, 1), ("b.png", -1, 0),
                                                                        ("c.jpg", -1, 0)]
    assert not ds.labelled("train") and not ds.has_evaluation_splits


def test_manifest_inside_the_folder_with_person_and_split_columns_is_evaluable(tmp_path: Path):
    rows = []
    for i, (person, split) in enumerate([(1, "train"), (2, ""), (-1, "gallery"), (3, "query"), (3, "Gallery"),
                                         (0, "gallery")]):
        write_image(tmp_path / f"x{i}.jpg", seed=i)
        rows.append((f"x{i}.jpg", f"c{i % 2}", person, split))
    write_manifest(tmp_path / "manifest.csv", rows, header="Path, camera ,person,split")
    ds = load_dataset("folder", tmp_path)
    assert ds.layout == MANIFEST and ds.has_evaluation_splits and ds.labelled("train")
    assert [r.pid for r in ds.train] == [1, 2] and [r.pid for r in ds.query] == [3]
    assert [r.pid for r in ds.gallery] == [3, 0] and ds.splits["gallery"].junk == 1


@pytest.mark.parametrize("rows, header, message", [
    ([("gone.jpg", "c1"), ("ok.jpg", "c1")], "path,camera", r"1 listed file\(s\) do not exist \(line 2: .*gone.jpg\)"),
    ([("ok.jpg", "c1", "7", "train"), ("ok2.jpg", "c1", "", "train")], "path,camera,person,split",
     "1 of the 2 train rows name a person"),
    ([("ok.jpg", "c1", "tset")], "path,camera,split", "split 'tset' is not one of train, query, gallery"),
    ([("ok.jpg", "7")], "path,person", "the header must name path and camera"),
    ([("ok.jpg", "c1", "7")], "path,camera,persn", "unknown column 'persn'; did you mean 'person'"),
    ([("ok.jpg", "c1", "alice")], "path,camera,person", "person 'alice' is not an integer id"),
    ([("ok.jpg", "c1", "query"), ("ok2.jpg", "c1", "train")], "path,camera,split", "query rows but no gallery"),
    ([("ok.jpg", "c1"), ("./ok.jpg", "c2")], "path,camera", "is listed twice in train"),
    ([], "path,camera", "lists no image"),
])
def test_manifest_mistakes_are_one_line_naming_the_problem(tmp_path: Path, rows, header, message):
    write_image(tmp_path / "ok.jpg", seed=1)
    write_image(tmp_path / "ok2.jpg", seed=2)
    write_manifest(tmp_path / "manifest.csv", rows, header=header)
    with pytest.raises(DsglError, match=message) as info:
        load_dataset("folder", tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, size", [("demo", None), ("demo-market", "market")])
def test_generated_data_sets_are_written_at_their_size_under_their_own_folder(tmp_path, monkeypatch, name, size):
    """-d demo-market is the demo generator at Market-1501's size, beside (never over) the small demo."""
    import dsgl_cli.data.demo as demo

    asked = []

    def fake_ensure(root, seed=0, size=None, workers=None):
        asked.append((root, size))
        make_market_like(root, train_ids=4, test_ids=3, cams=2)

    monkeypatch.setattr(demo, "ensure_demo", fake_ensure)
    ds = load_dataset(name, tmp_path)
    assert asked == [(tmp_path / name, size)]
    assert ds.root == tmp_path / name and len(ds.train) > 0
