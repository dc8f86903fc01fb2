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
from dsgl_cli.data.datasets import load_dataset
from tests import independent
from tests.helpers import make_market_like

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
        assert {"num_clusters", "num_outliers", "precision", "recall", "f_score", "ari", "nmi"} <= set(row)
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
    assert "clusters" in result.output


@pytest.mark.parametrize("extra, message, code", [
    (["--eps-sweep", "0.8:0.4:0.1"], "the sweep is empty", 2),
    (["--eps-sweep", "0.8:1.2:0.2"], "0 < eps < 1", 2),
    (["--eps-sweep", "abc"], "START:STOP:STEP", 2),
    (["--eps", "1.5"], "--eps: must satisfy 0 < eps < 1", 2),
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
