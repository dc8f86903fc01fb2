"""`dsgl export` from an authors'-format checkpoint against an independent forward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli.cli import app
from tests import independent

runner = CliRunner()


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    ckpt = independent.authors_checkpoint("resnet18", seed=11)
    path = root / "model_best.pth.tar"
    torch.save(ckpt, path)
    return path, ckpt


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(n))


def test_torchscript_reproduces_the_independent_forward(authors, tmp_path: Path):
    path, ckpt = authors
    out = tmp_path / "reid.pt"
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["export", str(path), "--format", "torchscript", "--output", str(out),
                                 "-a", "resnet18", "--height", "64", "--width", "32", "--device", "cpu",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "max |difference|" in result.output
    assert json.loads(report.read_text())["max_abs_diff"] <= 1e-4
    module = torch.jit.load(str(out))
    for n in (1, 3):
        x = _batch(n)
        assert torch.allclose(module(x), independent.forward(ckpt, x, "resnet18"), atol=1e-4)
    assert "BoxMOT" in result.output  # a .pt name is taken for a BoxMOT checkpoint: the user is told
    meta = json.loads(Path(str(out) + ".metadata.json").read_text())
    assert meta["input"]["height"] == 64 and meta["input"]["width"] == 32 and meta["arch"] == "resnet18"
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["feature_dim"] == 512


def test_onnx_reproduces_the_independent_forward(authors, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    path, ckpt = authors
    out = tmp_path / "reid.onnx"
    result = runner.invoke(app, ["export", str(path), "--format", "onnx", "--output", str(out),
                                 "-a", "resnet18", "--height", "64", "--width", "32"])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for n in (1, 3):
        x = _batch(n)
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        assert torch.allclose(got, independent.forward(ckpt, x, "resnet18"), atol=1e-4)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("format", "did you mean 'onnx'"),
    ("extra", "pip install"),
])
def test_failures_are_one_line(authors, tmp_path: Path, monkeypatch, case: str, message: str):
    path, _ = authors
    args = ["export", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx"), "-a", "resnet18"]
    if case == "missing":
        args[1] = str(tmp_path / "nothing.pth")
    elif case == "format":
        args[3] = "onx"
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
