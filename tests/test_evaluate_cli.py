"""`dsgl evaluate` on an authors'-format checkpoint against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli.cli import app
from dsgl_cli.data.datasets import load_dataset
from tests import independent
from tests.helpers import make_market_like
from tests.reference_metrics import loop_evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    data = root / "data"
    make_market_like(data / "market1501" / "Market-1501-v15.09.15", train_ids=2, test_ids=6, cams=3, per_cam=3,
                     size=(48, 24), colored=True)
    ckpt = independent.authors_checkpoint("resnet18", seed=3)
    path = root / "model_best.pth.tar"
    torch.save(ckpt, path)
    return data, path, ckpt


@pytest.mark.slow
def test_authors_checkpoint_gives_the_independent_numbers(setup, tmp_path: Path):
    data, path, ckpt = setup
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(path), "-d", "market1501", "--data-dir", str(data), "-a", "resnet18",
                                 "--pooling-type", "gem", "--json", str(out), "-j", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    ds = load_dataset("market1501", data)
    images = torch.stack([independent.preprocess(r.path, 256, 128) for r in ds.query + ds.gallery])
    feats = independent.forward(ckpt, images, "resnet18").numpy().astype(np.float64)
    qf, gf = feats[: len(ds.query)], feats[len(ds.query):]
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    mAP, cmc, mINP, _ = loop_evaluate(dist, np.array([r.pid for r in ds.query]), np.array([r.pid for r in ds.gallery]),
                                   np.array([r.camid for r in ds.query]), np.array([r.camid for r in ds.gallery]))
    assert got["mAP"] == pytest.approx(mAP, abs=1e-3)
    assert got["rank1"] == pytest.approx(cmc[0], abs=1e-3)
    assert got["rank5"] == pytest.approx(cmc[4], abs=1e-3)
    assert got["rank10"] == pytest.approx(cmc[9], abs=1e-3)
    assert got["mINP"] == pytest.approx(mINP, abs=1e-3)
    assert 0.0 <= got["mAP"] <= 1.0


@pytest.mark.slow
def test_pooling_contradiction_is_warned_and_rerank_and_show_work(setup, tmp_path: Path):
    data, path, _ = setup
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", str(path), "-d", "market1501", "--data-dir", str(data), "-a", "resnet18",
                                 "--pooling-type", "avg", "--rerank", "--show", "2",
                                 "--show-dir", str(tmp_path / "pics"),
                                 "--json", str(out), "-j", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "contradicts the checkpoint" in result.output
    got = json.loads(out.read_text())
    assert set(got["rerank"]) >= {"mAP", "rank1", "rank5", "rank10", "mINP"}
    assert "re-ranked" in result.output
    assert len(list((tmp_path / "pics").glob("*.png"))) == 2


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("text", "text file"),
    ("wrong-arch", "does not fit"),
])
def test_bad_checkpoints_are_one_line_errors(setup, tmp_path: Path, kind: str, message: str):
    data, path, _ = setup
    args = ["evaluate", str(tmp_path / "nothing.pth"), "-d", "market1501", "--data-dir", str(data)]
    if kind == "text":
        fake = tmp_path / "fake.pth"
        fake.write_text("this is not a checkpoint\n")
        args[1] = str(fake)
    if kind == "wrong-arch":
        args[1] = str(path)
        args += ["-a", "resnet50"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
