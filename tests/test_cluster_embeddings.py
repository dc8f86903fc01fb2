"""`dsgl cluster --embeddings`: given features and cameras, no model or data set; labels equal to a dense
implementation of the spec followed by scikit-learn's DBSCAN."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from typer.testing import CliRunner

from dsgl_cli.cli import app
from dsgl_cli.evaluation.embeddings import Embeddings, save_embeddings
from tests.reference_ca_jaccard import camera_biased_features, reference_ca_jaccard

runner = CliRunner()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    x, cams, ids = camera_biased_features([50, 40, 60, 5, 25], 30, 24, seed=11)
    root = tmp_path_factory.mktemp("emb")
    paths = [f"/images/c{c}/{i:04d}.jpg" for i, c in enumerate(cams)]
    names = [f"cam{c}" for c in cams]
    embed = save_embeddings(root / "embed.npz", Embeddings(x, paths, names, 64, 32, "resnet18", "gem", "m.pth", "ab"))
    plain = root / "plain.npz"
    np.savez(plain, features=x, cams=cams, ids=ids)
    return x, cams, ids, paths, embed, plain


def _labels(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_camera_aware_labels_equal_the_dense_spec_and_sklearn(case, tmp_path):
    x, cams, _, paths, embed, _ = case
    out = tmp_path / "labels.csv"
    result = runner.invoke(app, ["cluster", "--embeddings", str(embed), "--jaccard", "camera-aware", "--eps", "0.55",
                                 "--k2-intra", "2", "--k2-inter", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    expected = DBSCAN(eps=0.55, min_samples=4, metric="precomputed").fit_predict(reference_ca_jaccard(x, cams, None))
    rows = _labels(out)
    assert [r["path"] for r in rows] == paths
    assert [r["camera"] for r in rows] == [f"cam{c}" for c in cams]
    got = np.array([int(r["pseudo_label"]) for r in rows])
    np.testing.assert_array_equal(got, expected)
    assert expected.max() >= 2 and (expected < 0).any()   # clusters and outliers both compared


def test_a_plain_npz_with_cams_gives_row_numbers_and_the_sweep_marks_auto(case, tmp_path):
    x, cams, ids, _, _, plain = case
    out, js = tmp_path / "labels.csv", tmp_path / "r.json"
    result = runner.invoke(app, ["cluster", "--embeddings", str(plain), "--jaccard", "camera-aware", "--eps", "auto",
                                 "--eps-sweep", "0.4:0.7:0.1", "--output", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    assert [round(r["eps"], 6) for r in report["rows"]] == [0.4, 0.5, 0.6, 0.7]
    assert report["labelled"] and "ari" in report["rows"][0]
    auto = report["auto_row"]
    assert auto["eps"] == report["auto_eps"] and "ari" in auto and "auto" in result.output
    rows = _labels(out)   # --eps auto: the CSV holds the rule's labels
    assert [r["path"] for r in rows] == [str(i) for i in range(len(x))]
    assert [r["camera"] for r in rows] == [str(c) for c in cams]
    assert len({r["pseudo_label"] for r in rows}) - 1 == auto["num_clusters"]


@pytest.mark.parametrize("arrays,extra,message", [
    ({"x": np.zeros((3, 2))}, [], "has no key features (nor embeddings, feats); it holds x"),
    ({"features": np.eye(30, dtype=np.float32)}, ["--jaccard", "camera-aware"],
     "has no key cameras (nor cams, camids)"),
    ({"features": np.eye(30, dtype=np.float32), "cameras": np.array([""] * 30)}, ["--jaccard", "camera-aware"],
     "has no key cameras"),
    ({"features": np.eye(30, dtype=np.float32), "cams": np.zeros(29)}, [], "cameras has shape (29,), expected (30,)"),
    ({"features": np.full((3, 2), np.nan, dtype=np.float32)}, [], "NaN or infinite"),
])
def test_bad_files_are_one_line_errors(tmp_path, arrays, extra, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = runner.invoke(app, ["cluster", "--embeddings", str(path), *extra])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_embeddings_refuse_a_checkpoint_and_show(case, tmp_path):
    *_, plain = case
    result = runner.invoke(app, ["cluster", str(plain), "--embeddings", str(plain)])
    assert result.exit_code == 2 and "a checkpoint cannot be used with it" in result.output
    result = runner.invoke(app, ["cluster", "--embeddings", str(tmp_path / "none.npz")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_a_sweep_on_features_without_clusters_still_shows_its_rows(tmp_path):
    path = tmp_path / "spread.npz"
    np.savez(path, features=np.eye(40, dtype=np.float32))   # 40 orthogonal rows: nothing clusters
    result = runner.invoke(app, ["cluster", "--embeddings", str(path), "--k1", "5", "--eps-sweep", "0.4:0.6:0.1"])
    assert result.exit_code == 0, result.output
    assert "no auto row: --eps auto: no eps between 0.2 and 0.9 gives two clusters" in " ".join(result.output.split())
    result = runner.invoke(app, ["cluster", "--embeddings", str(path), "--k1", "5", "--eps", "auto"])
    assert result.exit_code == 1 and "--eps auto: no eps" in result.output


@pytest.mark.slow
def test_a_data_set_clusters_camera_aware_with_its_file_name_cameras(tmp_path):
    from tests.helpers import make_market_like

    make_market_like(tmp_path / "data", train_ids=8, test_ids=2, cams=3, per_cam=2, colored=True)
    out, js = tmp_path / "labels.csv", tmp_path / "r.json"
    result = runner.invoke(app, ["cluster", "-d", "folder", "--data-dir", str(tmp_path / "data"), "-a", "resnet18",
                                 "--pretrained", "none", "--height", "32", "--width", "16", "--jaccard", "camera-aware",
                                 "--k1-intra", "1", "--k1-inter", "4", "--k2-intra", "2", "--k2-inter", "3",
                                 "--eps", "0.6", "-j", "0", "--device", "cpu", "--output", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["jaccard"] == "camera-aware"
    assert len(_labels(out)) == 48 and {r["camera"] for r in _labels(out)} == {"1", "2", "3"}
    bad = runner.invoke(app, ["cluster", "-d", "folder", "--data-dir", str(tmp_path / "data"), "-a", "resnet18",
                              "--pretrained", "none", "--height", "32", "--width", "16", "--jaccard", "camera-aware",
                              "-j", "0", "--device", "cpu", "--k1-inter", "60"])
    assert bad.exit_code == 2 and "--k1-inter 60 asks for 61 neighbours per image but only 48 images" in bad.output
