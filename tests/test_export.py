"""Export engine: ONNX and TorchScript files equal the eager model, the metadata sidecar, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from dsgl_cli import export as E
from dsgl_cli.errors import DsglError
from dsgl_cli.export import core, writers
from dsgl_cli.models.checkpoint import load_model, make_checkpoint, save_checkpoint
from dsgl_cli.models.reid import build_model

H, W = 32, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(features=0, pooling="gem"):
    torch.manual_seed(0)
    model = build_model("resnet18", pooling=pooling, features=features)
    with torch.no_grad():
        model.train()
        model(torch.randn(4, 3, H, W))  # move BN statistics off their initial values
        if pooling == "gem":
            model.gap.p.fill_(3.3)
    return model.eval()


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    path = tmp_path_factory.mktemp("ours") / "model_best.pth.tar"
    save_checkpoint(path, make_checkpoint(_model(features=16), epoch=5, height=H, width=W, best_mAP=0.3))
    return path


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, H, W, generator=gen) for n in (1, 3)]


def _eager(path, **kw):
    model, _ = load_model(path, **kw)
    return model


def test_onnx_export_matches_eager(ours, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    report = E.export_model(ours, "ONNX", out)
    assert report.output == out and out.is_file() and report.format == "onnx" and report.opset == 17
    assert report.max_abs_diff <= 1e-4 and report.feature_dim == 16 and (report.height, report.width) == (H, W)
    meta = json.loads((tmp_path / "m.onnx.metadata.json").read_text())
    assert meta["input"]["height"] == H and meta["input"]["width"] == W and meta["feature_dim"] == 16
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["arch"] == "resnet18" and meta["pooling"] == "gem" and meta["format"] == "onnx"
    assert meta["opset"] == 17 and meta["max_abs_diff"] == report.max_abs_diff

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "embeddings"
    model = _eager(ours)
    for x in _batches():  # dynamic batch axis: 1 and 3
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_export_matches_eager(ours, tmp_path):
    report = E.export_model(ours, "torchscript", None)
    assert report.output == ours.with_name("model_best.torchscript") and report.opset is None
    meta = json.loads(report.metadata.read_text())
    assert report.metadata.name == "model_best.torchscript.metadata.json" and meta["format"] == "torchscript"
    loaded = torch.jit.load(str(report.output))
    model = _eager(ours)
    with torch.no_grad():
        for x in _batches():
            got, want = loaded(x), model(x)
            assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-4


def test_onnx_export_from_authors_checkpoint(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    src = _model(features=0, pooling="gem")
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
                "epoch": 10, "best_mAP": np.float64(0.5)}, ckpt)
    out = tmp_path / "authors.onnx"
    report = E.export_model(ckpt, "onnx", out, arch="resnet18", pooling="avg", height=H, width=W, opset=17)
    assert report.pooling == "gem" and report.feature_dim == 512
    assert any("contradicts" in w for w in report.warnings)  # the pooling warning reaches the caller
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x in _batches():
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(got - src(x).numpy()).max() <= 1e-4
    assert json.loads((tmp_path / "authors.onnx.metadata.json").read_text())["checkpoint_format"] == "authors"


def test_unknown_format(ours, tmp_path):
    with pytest.raises(DsglError, match="did you mean 'onnx'") as err:
        E.export_model(ours, "onxx", tmp_path / "x")
    assert err.value.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_missing_onnx_extra(ours, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(DsglError, match=r"pip install 'dsgl\[export\]'"):
        E.export_model(ours, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_disagreeing_export_is_rejected_and_removed(ours, tmp_path, monkeypatch):
    real = writers.verify_torchscript
    monkeypatch.setattr(writers, "verify_torchscript", lambda output, batch: real(output, batch) + 1e-3)
    out = tmp_path / "bad.torchscript"
    stale = tmp_path / "bad.torchscript.metadata.json"
    stale.write_text("{}")  # left by an earlier export: it must not outlive the file it described
    with pytest.raises(DsglError, match="differs from the eager model"):
        E.export_model(ours, "torchscript", out)
    assert not out.exists() and not stale.exists()


def test_bad_opset(ours, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(DsglError, match="--opset"):
        E.export_model(ours, "onnx", tmp_path / "m.onnx", opset=3)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_named_pt_is_written_with_a_warning(ours, tmp_path):
    report = E.export_model(ours, "torchscript", tmp_path / "reid.pt")
    assert report.output.is_file() and report.metadata == tmp_path / "reid.pt.metadata.json"
    assert any("BoxMOT" in w and "*.torchscript" in w for w in report.warnings)


def test_torchscript_is_kept_on_the_cpu(monkeypatch):
    monkeypatch.setattr(core, "resolve_device", lambda spec: torch.device("cuda"))  # as on a GPU machine
    notes: list[str] = []
    assert core._export_device("torchscript", "auto", notes) == torch.device("cpu") and notes == []
    assert core._export_device("torchscript", "cuda", notes) == torch.device("cpu") and "CPU" in notes[0]
    assert core._export_device("onnx", "cuda", []) == torch.device("cuda")
