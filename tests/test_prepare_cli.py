"""`dsgl prepare` and the app's shared behaviour, through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dsgl_cli import __version__
from dsgl_cli.cli import app
from tests.helpers import make_camera_folders, make_market_like, write_image, write_manifest

runner = CliRunner()


def _touch_split(folder: Path, n_images: int, ids: list[int], cams: int, start: int = 0) -> None:
    """Empty files named like the release: parsing never opens them."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        pid = ids[k % len(ids)]
        cam = 1 + (k + k // len(ids)) % cams
        name = f"{pid:04d}_c{cam}s1_{start + k:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{start + k:06d}_00.jpg"
        (folder / name).touch()


def test_version_and_help_list_working_commands():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "prepare" in result.output


@pytest.mark.slow
def test_release_sized_market_tree_matches_the_canonical_figures(tmp_path: Path):
    root = tmp_path / "market1501" / "Market-1501-v15.09.15"
    _touch_split(root / "bounding_box_train", 12936, list(range(1, 752)), 6)
    _touch_split(root / "query", 3368, list(range(752, 1502)), 6)
    _touch_split(root / "bounding_box_test", 15913, list(range(752, 1502)) + [0], 6)
    _touch_split(root / "bounding_box_test", 3819, [-1], 6, start=900000)
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["prepare", "-d", "market1501", "--data-dir", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["warnings"] == []
    assert {s: (r["images"], r["ids"], r["cams"]) for s, r in report["splits"].items()} == {
        "train": (12936, 751, 6), "query": (3368, 750, 6), "gallery": (15913, 751, 6)}
    assert report["splits"]["gallery"]["junk"] == 3819


def test_msmt17_tree_differences_are_warned(tmp_path: Path):
    root = tmp_path / "msmt17" / "MSMT17_V1"
    _touch_split(root / "bounding_box_train", 300, list(range(0, 30)), 15)
    _touch_split(root / "query", 40, list(range(30, 50)), 15)
    _touch_split(root / "bounding_box_test", 90, list(range(30, 50)), 15)
    (root / "query" / "badname.jpg").touch()
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["prepare", "-d", "msmt17", "--data-dir", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["splits"]["train"]["cams"] == 15 and report["splits"]["train"]["ids"] == 30
    assert "train: 300 images, the release has 32621" in report["warnings"]
    assert report["splits"]["query"]["misnamed_examples"] == ["badname.jpg"]
    assert any("badname.jpg" in w for w in report["warnings"])


def test_missing_split_prints_tree_and_exact_path(tmp_path: Path):
    result = runner.invoke(app, ["prepare", "-d", "market1501", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "Expected layout" in result.output
    assert str(tmp_path / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train") in result.output
    assert "Traceback" not in result.output


def test_check_images_names_the_corrupt_jpeg(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2, junk=False)
    broken = tmp_path / "bounding_box_train" / "0001_c1s1_000000_00.jpg"
    broken.write_bytes(broken.read_bytes()[:60])
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path), "--check-images"])
    assert result.exit_code == 1
    assert broken.name in result.output and "1 unreadable image" in result.output
    broken.unlink()
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path), "--check-images"])
    assert result.exit_code == 0 and "images decode" in result.output


def test_empty_split_fails(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2, junk=False)
    for p in (tmp_path / "query").iterdir():
        p.unlink()
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "empty split(s): query" in result.output


def test_bad_values_exit_2_with_one_line(tmp_path: Path):
    result = runner.invoke(app, ["prepare", "-d", "markt", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown data set" not in result.output or "did you mean" in result.output
    result = runner.invoke(app, ["prepare", "-d", "folder", "-j", "-1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "-j/--workers: must be >= 0" in result.output


def test_data_dir_from_environment(tmp_path: Path, monkeypatch):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2, junk=False)
    monkeypatch.setenv("DSGL_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["prepare", "-d", "folder"])
    assert result.exit_code == 0, result.output


def test_camera_folders_report_cameras_sizes_modes_duplicates_and_name_the_unreadable(tmp_path: Path):
    written = make_camera_folders(tmp_path / "cams")
    first = sorted(p for p in written if "entrance" in p)[1]
    copy = tmp_path / "cams" / "gate-2" / "copy of a frame.jpg"
    shutil.copyfile(first, copy)
    broken = tmp_path / "cams" / "Lobby east" / "night" / "cut.jpg"
    broken.parent.mkdir()
    broken.write_bytes(Path(first).read_bytes()[:80])
    (tmp_path / "cams" / "gate-10" / "index.txt").write_text("x")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path / "cams"), "--check-images",
                                 "--json", str(out)])
    assert result.exit_code == 1 and "1 unreadable image(s)" in result.output
    report = json.loads(out.read_text())
    assert report["layout"] == "camera folders"
    assert report["cameras"] == {"entrance": {"train": 10}, "gate-2": {"train": 11}, "gate-10": {"train": 10},
                                 "Lobby east": {"train": 11}}
    assert report["splits"]["train"]["labelled"] is False and report["splits"]["train"]["ids"] is None
    assert report["sizes"] == {"16x32": 28 + 1, "20x40": 12}     # 3 larger images per camera; + the copy, not the cut
    assert report["stored"] == {"JPEG RGB": 37, "PNG L": 1, "PNG RGBA": 1, "JPEG CMYK": 1, "WEBP RGB": 1}
    assert report["duplicates"] == [sorted([first, str(copy)])]
    assert [u["path"] for u in report["unreadable"]] == [str(broken)]
    assert report["skipped"] == [{"path": str(tmp_path / "cams" / "gate-10" / "index.txt"),
                                  "reason": "not an image file (.txt)"}]
    text = " ".join(result.output.split())
    assert f"unreadable {broken}" in text and "copy of a frame.jpg" in text and "index.txt" in text
    assert "labelled splits (person ids known): none" in text and "Lobby east" in text


def test_webp_palette_and_bmp_are_counted_not_vanished_and_decoded(tmp_path: Path):
    make_market_like(tmp_path, train_ids=2, test_ids=2, cams=2, junk=False)
    train = tmp_path / "bounding_box_train"
    Image.new("RGBA", (16, 32), (1, 2, 3, 4)).save(train / "0001_c1s1_000999_00.webp")
    Image.new("RGB", (16, 32), (200, 9, 9)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        train / "0002_c2s1_000998_00.png")
    Image.new("RGB", (16, 32), (9, 9, 200)).save(train / "0002_c1s1_000997_00.bmp")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path), "--check-images",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["splits"]["train"]["images"] == 2 * 2 * 2 + 3 and report["skipped"] == []
    assert (report["stored"]["WEBP RGBA"], report["stored"]["PNG P"], report["stored"]["BMP RGB"]) == (1, 1, 1)
    assert f"All {8 + 3 + 4 + 8:,} images decode" in result.output


def test_manifest_naming_missing_files_fails_in_one_line(tmp_path: Path):
    write_manifest(tmp_path / "manifest.csv", [("a.jpg", "door")])
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "1 listed file(s) do not exist" in result.output
    assert "Traceback" not in result.output


def test_manifest_given_as_the_data_dir_is_read(tmp_path: Path):
    write_image(tmp_path / "a" / "1.jpg", seed=1)
    write_image(tmp_path / "b" / "2.jpg", seed=2)
    manifest = write_manifest(tmp_path / "lists" / "all.csv", [("../a/1.jpg", "door", 4), ("../b/2.jpg", "hall", 5)],
                              header="path,camera,person")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(manifest), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["layout"] == "manifest" and report["splits"]["train"]["ids"] == 2
    assert report["cameras"] == {"door": {"train": 1}, "hall": {"train": 1}}


def test_camera_names_and_paths_print_as_they_are(tmp_path: Path):
    write_image(tmp_path / "[night] cam" / "a[1].jpg", seed=1)
    write_image(tmp_path / "day" / "b.jpg", seed=2)
    (tmp_path / "day" / "[x].txt").write_text("x")
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "[night] cam" in result.output and "[x].txt" in result.output


def test_one_camera_and_one_image_are_counted_in_the_singular(tmp_path: Path):
    make_camera_folders(tmp_path / "cams", cameras=("entrance",), people=2, per_camera=1)
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    assert "1 camera\n" in result.output and "1 cameras" not in result.output
    from dsgl_cli.console import counted

    assert (counted(1, "image"), counted(1400, "image"), counted(1, "pseudo identity", "pseudo identities")) == \
        ("1 image", "1,400 images", "1 pseudo identity")
