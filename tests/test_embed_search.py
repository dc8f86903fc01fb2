"""`dsgl embed` and `dsgl search` on unlabelled camera folders, against the exported ONNX model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli.cli import app
from dsgl_cli.data.own_layouts import collect_images
from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation.embeddings import KEYS
from tests import independent
from tests.helpers import make_camera_folders, write_image, write_manifest

runner = CliRunner()
MODEL = ["-a", "resnet18", "--height", "64", "--width", "32", "-j", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("embed")
    written = make_camera_folders(root / "cams", people=3, per_camera=2)
    (root / "cams" / "gate-2" / "notes.txt").write_text("not an image")
    ckpt = root / "model_best.pth.tar"
    torch.save(independent.authors_checkpoint("resnet18", seed=7), ckpt)
    npz = root / "gallery.npz"
    result = runner.invoke(app, ["embed", str(ckpt), str(root / "cams"), "--output", str(npz), *MODEL,
                                 "--json", str(root / "embed.json")])
    assert result.exit_code == 0, result.output
    return root, written, ckpt, npz


def _search(setup, *args: str) -> tuple:
    root, _, ckpt, _ = setup
    out = root / f"search{abs(hash(args))}.json"
    result = runner.invoke(app, ["search", str(ckpt), *args, *MODEL, "--json", str(out)])
    return result, (json.loads(out.read_text()) if result.exit_code == 0 else None)


def test_embed_writes_one_unit_row_per_image_with_paths_and_cameras(setup):
    root, written, _, npz = setup
    with np.load(npz) as data:
        assert set(data.files) == set(KEYS)
        feats, paths, cams = data["features"], list(data["paths"]), list(data["cameras"])
        assert (int(data["height"]), int(data["width"]), int(data["feature_dim"])) == (64, 32, 512)
        assert str(data["arch"]) == "resnet18" and str(data["format"]) == "dsgl-embeddings"
    assert feats.dtype == np.float32 and feats.shape == (len(written), 512)
    assert sorted(paths) == sorted(written) and paths == sorted(paths)
    assert [str(c) for c in cams] == [written[p][0] for p in paths]          # the camera folder of each image
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    report = json.loads((root / "embed.json").read_text())
    assert report["images"] == len(written) and report["skipped"][0]["path"].endswith("notes.txt")


def test_embeddings_equal_the_exported_onnx_model_on_the_same_images(setup, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    _, _, ckpt, npz = setup
    onnx_file = tmp_path / "reid.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--format", "onnx", "--output", str(onnx_file), "-a", "resnet18",
                                 "--height", "64", "--width", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(npz) as data:
        feats, paths = data["features"], [str(p) for p in data["paths"]]
    batch = torch.stack([independent.preprocess(p, 64, 32) for p in paths]).numpy()   # PIL bicubic, ImageNet
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: batch})
    assert np.abs(feats - expected).max() <= 1e-4


def test_a_gallery_image_used_as_query_is_left_out_of_its_own_list(setup):
    root, written, _, npz = setup
    query = next(p for p in written if p.endswith(".webp"))
    result, report = _search(setup, "--query", query, "--gallery", str(npz), "--top", "3")
    assert result.exit_code == 0, result.output
    (res,) = report["queries"]
    assert res["path"] == query and query not in res["gallery_paths"] and len(res["gallery_paths"]) == 3
    assert res["camera"] == written[query][0] and report["exclude_same"] == "file"
    assert res["distances"] == sorted(res["distances"]) and report["distance"] == "squared_euclidean"
    assert report["gallery_images"] == len(written)
    # the same file under another name (a symbolic link) is still the query itself
    link = root / "query-link.webp"
    if not link.exists():
        link.symlink_to(query)
    _, linked = _search(setup, "--query", str(link), "--gallery", str(npz), "--top", "3")
    assert query not in linked["queries"][0]["gallery_paths"]
    # none keeps it: rank 1 at distance 0
    _, kept = _search(setup, "--query", query, "--gallery", str(npz), "--top", "3", "--exclude-same", "none")
    (res,) = kept["queries"]
    assert res["gallery_paths"][0] == query and res["distances"][0] == pytest.approx(0, abs=1e-5)


def test_exclude_same_camera_leaves_out_the_query_camera_and_tracklet_needs_tracklets(setup):
    root, written, _, npz = setup
    query = next(p for p in written if p.endswith(".webp"))
    _, report = _search(setup, "--query", query, "--gallery", str(npz), "--top", "50", "--exclude-same", "camera")
    (res,) = report["queries"]
    own = written[query][0]
    assert res["cameras"] and own not in res["cameras"]
    assert len(res["gallery_paths"]) == sum(1 for cam, _ in written.values() if cam != own)
    result, _ = _search(setup, "--query", query, "--gallery", str(npz), "--exclude-same", "tracklet")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--exclude-same tracklet: neither the query nor the gallery records tracklets" in result.output
    loose = root / "loose.jpg"      # a file given by name has no camera
    write_image(loose, seed=5)
    result, _ = _search(setup, "--query", str(loose), "--gallery", str(npz), "--exclude-same", "camera")
    assert result.exit_code == 2 and f"--exclude-same camera: the query {loose} has no camera" in result.output


def test_a_gallery_folder_is_embedded_once_saved_for_reuse_and_drawn(setup, tmp_path: Path):
    root, written, _, npz = setup
    saved, pictures = tmp_path / "again.npz", tmp_path / "lists"
    result, report = _search(setup, "--query", str(root / "cams" / "gate-10"), "--gallery", str(root / "cams"),
                             "--save-gallery", str(saved), "--rerank", "--show", "2", "--show-dir", str(pictures),
                             "--top", "4")
    assert result.exit_code == 0, result.output
    assert report["distance"] == "reranked" and len(report["queries"]) == sum(c == "gate-10" for c, _ in
                                                                              written.values())
    for res in report["queries"]:
        assert res["path"] not in res["gallery_paths"] and res["camera"] == "gate-10"   # from the gallery
    with np.load(npz) as a, np.load(saved) as b:
        assert list(a["paths"]) == list(b["paths"]) and np.allclose(a["features"], b["features"], atol=1e-6)
    assert len(list(pictures.glob("query_*.png"))) == 2 == len(report["ranked_lists"])


def _rewrite(npz: Path, out: Path, **changes) -> Path:
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(out, **{k: v for k, v in arrays.items() if v is not None})
    return out


@pytest.mark.parametrize("make, message", [
    (lambda npz, d: _rewrite(npz, d / "size.npz", height=np.int64(128)),
     "holds 512-d features of 128x32 inputs (resnet18), this checkpoint gives 512-d at 64x32"),
    (lambda npz, d: _rewrite(npz, d / "dim.npz", features=np.zeros((1, 2048), np.float32), paths=np.array(["a"]),
                             cameras=np.array([""]), feature_dim=np.int64(2048)), "holds 2048-d features"),
    (lambda npz, d: _rewrite(npz, d / "keys.npz", cameras=None, model_digest=None),
     "lacks the key(s) cameras, model_digest of a dsgl embeddings file"),
    (lambda npz, d: (d / "text.npz").write_text("hello") and d / "text.npz", "is not an embeddings file"),
])
def test_an_unfit_gallery_npz_is_one_line(setup, tmp_path: Path, make, message):
    root, written, _, npz = setup
    result, _ = _search(setup, "--query", next(iter(written)), "--gallery", str(make(npz, tmp_path)))
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_query_that_is_not_an_image_is_one_line(setup, tmp_path: Path):
    _, _, _, npz = setup
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.jpg").write_text("hello")
    for query, message in (("notes.txt", "is not an image (not an image file (.txt))"),
                           ("fake.jpg", "is not an image Pillow can read (UnidentifiedImageError")):
        result, _ = _search(setup, "--query", str(tmp_path / query), "--gallery", str(npz))
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output


def test_a_broken_image_inside_an_embedded_folder_is_named(setup, tmp_path: Path):
    _, _, ckpt, _ = setup
    write_image(tmp_path / "cam" / "ok.jpg", seed=1)
    (tmp_path / "cam" / "cut.jpg").write_bytes((tmp_path / "cam" / "ok.jpg").read_bytes()[:90])
    result = runner.invoke(app, ["embed", str(ckpt), str(tmp_path / "cam"), "-o", str(tmp_path / "f.npz"), *MODEL])
    assert result.exit_code == 1 and f"cannot read image {tmp_path / 'cam' / 'cut.jpg'}" in result.output
    assert not (tmp_path / "f.npz").exists()


def test_an_empty_camera_folder_stops_cluster_before_any_model(tmp_path: Path):
    make_camera_folders(tmp_path / "cams", people=1, per_camera=1)
    (tmp_path / "cams" / "roof").mkdir()
    result = runner.invoke(app, ["cluster", "-d", "folder", "--data-dir", str(tmp_path / "cams")])
    assert result.exit_code == 1 and "camera folder" in result.output and "roof holds no image" in result.output


@pytest.mark.parametrize("args, message", [
    (["search", "m.pth", "--query", "q.jpg", "--gallery", "g.npz", "--top", "0"], "--top: must be a positive number"),
    (["search", "m.pth", "--query", "q.jpg", "--gallery", "g.npz", "--show", "0"], "--show: must be a positive"),
    (["search", "m.pth", "--gallery", "g.npz"], "--query is required"),
    (["search", "m.pth", "--query", "q.jpg", "--gallery", "g.npz", "--save-gallery", "x.npz"], "already an .npz"),
    (["embed", "m.pth", "folder"], "--output F.npz is required"),
])
def test_usage_errors_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_embed_names_a_missing_input(setup, tmp_path: Path):
    _, _, ckpt, _ = setup
    result = runner.invoke(app, ["embed", str(ckpt), str(tmp_path / "nowhere"), "-o", str(tmp_path / "f.npz")])
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_collected_images_take_cameras_from_camera_folders_and_manifests_only(tmp_path: Path):
    written = make_camera_folders(tmp_path / "cams", people=2, per_camera=2)
    root = collect_images([tmp_path / "cams"], "PATH")
    assert root.cameras == [written[p][0] for p in root.paths] and sorted(root.paths) == sorted(written)
    one = collect_images([tmp_path / "cams" / "gate-10"], "PATH")            # holds images and day folders
    assert set(one.cameras) == {""} and len(one.paths) == 4
    write_image(tmp_path / "x.jpg", seed=3)
    manifest = write_manifest(tmp_path / "m.csv", [("x.jpg", "door")])
    mixed = collect_images([manifest, tmp_path / "x.jpg", tmp_path / "cams" / "gate-10"], "PATH")
    assert mixed.cameras[:1] == ["door"] and len(mixed.paths) == 1 + 4         # x.jpg is collected once
    with pytest.raises(DsglError, match="no image found"):
        (tmp_path / "empty").mkdir()
        collect_images([tmp_path / "empty"], "--gallery")


def test_evaluate_says_it_needs_a_labelled_query_and_gallery(setup):
    root, _, ckpt, _ = setup
    result = runner.invoke(app, ["evaluate", str(ckpt), "-d", "folder", "--data-dir", str(root / "cams"), *MODEL])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "has no query and gallery with person ids, which mAP needs" in text
    assert "camera folders, train split only" in text and "Traceback" not in result.output


@pytest.mark.slow
def test_the_whole_workflow_as_a_user_runs_it(tmp_path: Path):
    """prepare -> cluster --show -> embed -> search, each its own process, on camera folders nobody labelled."""
    written = make_camera_folders(tmp_path / "cams", people=4, per_camera=2)
    ckpt = tmp_path / "model.pth"
    torch.save(independent.authors_checkpoint("resnet18", seed=2), ckpt)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "DSGL_OFFLINE": "1"}
    data = ["-d", "folder", "--data-dir", str(tmp_path / "cams")]

    def dsgl(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dsgl_cli", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "4 cameras" in dsgl("prepare", *data, "--check-images")
    dsgl("cluster", str(ckpt), *data, *MODEL, "--k1", "5", "--k2", "2", "--eps", "0.6", "--output", "labels.csv",
         "--show", "3")
    assert (tmp_path / "labels_identities" / "index.html").is_file()
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 1 + len(written)
    dsgl("embed", str(ckpt), str(tmp_path / "cams"), "--output", "gallery.npz", *MODEL)
    query = sorted(written)[3]
    dsgl("search", str(ckpt), "--query", query, "--gallery", "gallery.npz", *MODEL, "--show", "1", "--json", "s.json")
    result = json.loads((tmp_path / "s.json").read_text())["queries"][0]
    assert query not in result["gallery_paths"] and (tmp_path / "search").is_dir()
