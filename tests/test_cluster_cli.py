"""`dsgl cluster`: one distance, a sweep of eps values, labels CSV, and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli.cli import app
from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.clustering.jaccard import compute_jaccard_distance
from dsgl_cli.commands.cluster import MAX_SWEEP, parse_sweep, show_folder
from dsgl_cli.data.datasets import load_dataset
from tests import independent
from tests.helpers import make_camera_folders, make_market_like

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusterset")
    make_market_like(root / "data", train_ids=8, test_ids=2, cams=3, per_cam=2, size=(32, 16), colored=True)
    ckpt = independent.authors_checkpoint("resnet18", seed=5)
    path = root / "model.pth.tar"
    torch.save(ckpt, path)
    return root / "data", path, ckpt


@pytest.mark.slow
def test_labels_csv_equals_the_engine_on_independent_features(setup, tmp_path: Path):
    data, path, ckpt = setup
    out_csv, out_json = tmp_path / "labels.csv", tmp_path / "c.json"
    args = ["cluster", str(path), "-d", "folder", "--data-dir", str(data), "-a", "resnet18", "--height", "64",
            "--width", "32", "--k1", "5", "--k2", "2", "--eps", "0.5", "--eps-sweep", "0.3:0.7:0.2",
            "--output", str(out_csv), "--json", str(out_json), "-j", "0", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert [round(r["eps"], 6) for r in report["rows"]] == [0.3, 0.5, 0.7]
    for row in report["rows"]:
        assert {"num_clusters", "num_outliers", "precision", "recall", "f_score", "ari", "nmi",
                "multi_camera_fraction", "mean_intra_similarity", "agreement_ari", "agreement_nmi"} <= set(row)
    ds = load_dataset("folder", data)
    images = torch.stack([independent.preprocess(r.path, 64, 32) for r in ds.train])
    feats = independent.forward(ckpt, images, "resnet18")
    expected = dbscan(compute_jaccard_distance(feats, k1=5, k2=2), eps=0.5)
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [r.path for r in ds.train]
    assert np.array_equal(np.array([int(r["pseudo_label"]) for r in rows]), expected)
    assert [int(r["camera"]) for r in rows] == [r.camid + 1 for r in ds.train]


def test_without_checkpoint_uses_pretrained_weights(setup, tmp_path: Path):
    data, _, _ = setup
    result = runner.invoke(app, ["cluster", "-d", "folder", "--data-dir", str(data), "-a", "resnet18",
                                 "--pretrained", "none", "--height", "32", "--width", "16", "--k1", "5", "--k2", "2",
                                 "-j", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "clusters" in result.output and "precision" in result.output and "x-cam" in result.output


@pytest.mark.parametrize("extra, message, code", [
    (["--eps-sweep", "0.8:0.4:0.1"], "the sweep is empty", 2),
    (["--eps-sweep", "0.8:1.2:0.2"], "0 < eps < 1", 2),
    (["--eps-sweep", "abc"], "START:STOP:STEP", 2),
    (["--eps", "1.5"], "--eps: must satisfy 0 < eps < 1", 2),
    (["--eps-sweep", "nan:0.8:0.1"], "must be finite numbers", 2),
    (["--eps-sweep", "0.4:inf:0.1"], "must be finite numbers", 2),
    (["--eps-sweep", "0.4:0.8:0.000005"], "has 80,001 values, more than 200", 2),
    (["--show", "0"], "--show: must be a positive number of identities, got 0", 2),
])
def test_bad_sweeps_and_eps(setup, extra, message, code):
    data, path, _ = setup
    result = runner.invoke(app, ["cluster", str(path), "-d", "folder", "--data-dir", str(data), *extra])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bad_checkpoint(setup, tmp_path: Path):
    data, _, _ = setup
    fake = tmp_path / "x.pth"
    fake.write_text("hello")
    result = runner.invoke(app, ["cluster", str(fake), "-d", "folder", "--data-dir", str(data)])
    assert result.exit_code == 1 and "text file" in result.output and "Traceback" not in result.output


def test_a_sweep_of_exactly_the_limit_is_allowed_and_one_more_is_not():
    assert len(parse_sweep(f"0.1:{0.1 + (MAX_SWEEP - 1) * 0.004:.3f}:0.004")) == MAX_SWEEP
    with pytest.raises(Exception, match=f"has {MAX_SWEEP + 1} values"):
        parse_sweep(f"0.1:{0.1 + MAX_SWEEP * 0.004:.3f}:0.004")


def test_show_folder_defaults():
    assert show_folder(None, Path("out/labels.csv"), None) == Path("out/labels_identities")
    assert show_folder(Path("runs/x/model.pth"), None, None) == Path("runs/x/identities")
    assert show_folder(None, None, None) == Path("identities")
    assert show_folder(Path("m.pth"), Path("a.csv"), Path("pics")) == Path("pics")


@pytest.fixture(scope="module")
def cameras(tmp_path_factory):
    root = tmp_path_factory.mktemp("cams")
    return root, make_camera_folders(root / "cams")


def test_unlabelled_camera_folders_give_csv_pictures_and_label_free_columns(cameras, tmp_path: Path):
    root, written = cameras
    out_csv, out_json = tmp_path / "run" / "labels.csv", tmp_path / "c.json"
    result = runner.invoke(app, ["cluster", "-d", "folder", "--data-dir", str(root / "cams"), "-a", "resnet18",
                                 "--pretrained", "none", "--height", "32", "--width", "16", "--k1", "5", "--k2", "2",
                                 "--eps", "0.5", "--eps-sweep", "0.3:0.7:0.2", "-j", "0", "--device", "cpu",
                                 "--output", str(out_csv), "--show", "2", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == sorted(written)                       # one row per image
    assert all(r["camera"] == written[r["path"]][0] for r in rows)                   # the camera's own name
    report = json.loads(out_json.read_text())
    assert report["labelled"] is False and [r["eps"] for r in report["rows"]] == [0.3, 0.5, 0.7]
    for row in report["rows"]:
        assert "precision" not in row and {"multi_camera_fraction", "mean_intra_similarity"} <= set(row)
    assert report["rows"][0]["agreement_ari"] is None and report["rows"][1]["agreement_images"] > 0
    text = " ".join(result.output.split())
    assert "x-cam" in text and "ARI prev" in text and "precision" not in text and "unlabelled" in text
    sheets = tmp_path / "run" / "labels_identities"
    labels = [int(r["pseudo_label"]) for r in rows]
    assert (sheets / "index.html").is_file()
    pictures = sorted(sheets.glob("identity_*.png"))
    assert len(pictures) == min(2, len(set(labels) - {-1})) >= 1
    assert report["identity_sheets"][-1] == str(sheets / "index.html")
    assert "entrance" in (sheets / "index.html").read_text() or "gate" in (sheets / "index.html").read_text()


def _run_checkpoint(path: Path, **settings) -> Path:
    """A dsgl checkpoint of an untrained ResNet-18 whose run was trained with ``settings`` (as model_init.pth)."""
    from dsgl_cli.config import build_config, config_to_dict
    from dsgl_cli.models.checkpoint import make_checkpoint, save_checkpoint
    from dsgl_cli.models.reid import build_model

    torch.manual_seed(0)
    cfg = build_config({"dataset": "folder", "arch": "resnet18", "height": 32, "width": 16, **settings})
    model = build_model("resnet18", "gem", 0, 0.0, "none")
    save_checkpoint(path, make_checkpoint(model, epoch=0, height=32, width=16,
                                          extra={"config": config_to_dict(cfg)}))
    return path


def test_a_checkpoint_clusters_with_its_own_runs_settings_unless_flags_say_otherwise(cameras, tmp_path: Path):
    root, _ = cameras
    ckpt = _run_checkpoint(tmp_path / "model_init.pth", eps=0.45, k1=5, k2=2)
    args = ["cluster", str(ckpt), "-d", "folder", "--data-dir", str(root / "cams"), "-j", "0", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["eps"] == 0.45    # not the default 0.6
    assert ("clustering with eps 0.45, k1 5, k2 2, min-samples 4 (eps, k1, k2, min-samples from the checkpoint's "
            "run)") in result.output
    result = runner.invoke(app, [*args, "--eps", "0.5", "--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["eps"] == 0.5
    assert ("eps 0.5, k1 5, k2 2, min-samples 4 (eps from the command line; k1, k2, min-samples from the "
            "checkpoint's run)") in result.output


def test_one_camera_has_no_cross_camera_figure_and_says_so_once(tmp_path: Path):
    make_camera_folders(tmp_path / "cams", cameras=("entrance",), people=4, per_camera=3)
    ckpt = _run_checkpoint(tmp_path / "model.pth", eps=0.6, k1=5, k2=2)
    result = runner.invoke(app, ["cluster", str(ckpt), "-d", "folder", "--data-dir", str(tmp_path / "cams"), "-j", "0",
                                 "--device", "cpu", "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "unlabelled, 1 camera " in text and "1 cameras" not in text
    assert text.count("one camera: no x-cam figure") == 1
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["multi_camera_fraction"] is None
