"""dsgl's exports in the BoxMOT tracker (v25).

Always: the default file names and the sidecar say what BoxMOT reads (suffix -> backend,
``<file>.metadata.json`` -> crop size), so CI guards the contract where BoxMOT is absent.
With BoxMOT installed: each default export loads through BoxMOT's ReID factory the way
``boxmot track --reid FILE`` builds it, is fed crops of the exported size, and returns dsgl's
embeddings for the crops BoxMOT prepared.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dsgl_cli.data.demo.plan import plan_demo
from dsgl_cli.data.demo.render import render_image
from dsgl_cli.export import ExportReport, export_model, metadata_path, tracker_backend
from dsgl_cli.export.contract import naming_warnings
from dsgl_cli.models.checkpoint import load_model, make_checkpoint, save_checkpoint
from dsgl_cli.models.reid import build_model

H, W = 64, 32  # not BoxMOT's 256x128 default, so a missing sidecar shows
DIM = 16
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
NO_BOXMOT = "BoxMOT is not installed (pip install 'dsgl[boxmot]'); only the file-contract tests run"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", pooling="gem", features=DIM)
    with torch.no_grad():
        model.train()
        model(torch.randn(4, 3, H, W))  # BN statistics off their initial values
    path = tmp_path_factory.mktemp("reid") / "model_best.pth.tar"
    save_checkpoint(path, make_checkpoint(model.eval(), epoch=3, height=H, width=W))
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> dict[str, ExportReport]:
    """Both formats with default names, beside the checkpoint."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (pip install 'dsgl[export]')")
    return {fmt: export_model(checkpoint, fmt) for fmt in ("onnx", "torchscript")}


@pytest.fixture(scope="module")
def boxmot() -> Any:
    return pytest.importorskip("boxmot", reason=NO_BOXMOT)


# ----------------------------------------------------------------------------- the contract, without BoxMOT


def test_default_names_are_the_ones_boxmot_dispatches_on(exported, checkpoint):
    for fmt, name in (("onnx", "model_best.onnx"), ("torchscript", "model_best.torchscript")):
        report = exported[fmt]
        assert report.output == checkpoint.with_name(name) and tracker_backend(report.output) == fmt
        assert report.metadata == checkpoint.with_name(name + ".metadata.json") == metadata_path(report.output)
        assert report.metadata.is_file() and not checkpoint.with_name(name + ".json").exists()
        assert not report.warnings


def test_sidecar_holds_dsgl_fields_and_boxmot_keys(exported):
    for fmt, report in exported.items():
        meta = json.loads(report.metadata.read_text())
        # what BoxMOT reads
        assert meta["schema_version"] == 1 and meta["model_kwargs_schema_version"] == 1
        assert meta["model_kwargs"] == {"img_size": [H, W]}  # schema 1 rejects unknown model_kwargs
        assert meta["model_name"] == "dsgl_resnet18" and meta["preprocess"] == "resize"
        # dsgl's own description
        assert meta["format"] == fmt and meta["feature_dim"] == DIM and meta["normalized"] is True
        assert meta["input"]["height"] == H and meta["input"]["width"] == W and meta["input"]["dtype"] == "float32"
        assert meta["input"]["color"] == "RGB" and meta["mean"] == list(MEAN) and meta["std"] == list(STD)
        assert meta["max_abs_diff"] == report.max_abs_diff <= 1e-4


def test_onnx_graph_takes_a_dynamic_fp32_batch_named_images(exported):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(exported["onnx"].output)).graph
    (inp,), (out,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and dims == ["batch", 3, H, W]  # static H x W: ONNX Runtime reads it from the graph
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_loads_on_cpu_and_declares_its_width(exported):
    module = torch.jit.load(str(exported["torchscript"].output))  # no map_location, as BoxMOT loads it
    assert module.embedding_dim == DIM
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_names_boxmot_would_misread_are_flagged():
    assert naming_warnings(Path("reid.torchscript"), "torchscript") == []
    assert naming_warnings(Path("reid.ONNX"), "onnx") == []
    (pt,) = naming_warnings(Path("reid.torchscript.pt"), "torchscript")
    assert "own architectures" in pt and "*.torchscript" in pt
    (other,) = naming_warnings(Path("reid.onnx"), "torchscript")
    assert "last suffix" in other


# ----------------------------------------------------------------------------- inside BoxMOT


def _demo_frame(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Demo people (128 x 64 RGB) pasted into one frame, and their xyxy boxes."""
    plan = plan_demo(seed=3, num_train_ids=4, num_test_ids=2)
    crops = [render_image(plan, spec) for spec in plan.images[:n]]
    frame = np.full((160, 80 * n, 3), 90, np.uint8)
    boxes = []
    for i, crop in enumerate(crops):
        x, y = 80 * i + 8, 16
        frame[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
        boxes.append([x, y, x + crop.shape[1], y + crop.shape[0]])
    return frame, np.asarray(boxes, np.float32)


def _expected_batch(frame: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Our reading of BoxMOT's crop preparation: bilinear resize, RGB, /255, ImageNet mean/std, NCHW fp32."""
    import cv2

    out = []
    for x1, y1, x2, y2 in boxes.astype(int):
        crop = cv2.resize(frame[y1:y2, x1:x2], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append(((crop / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float()


def _encode(path: Path, frame: np.ndarray, boxes: np.ndarray, monkeypatch) -> tuple[Any, torch.Tensor, list]:
    """Build the encoder as ``boxmot track --reid PATH --device cpu`` does, encode one frame, catch its batches."""
    from boxmot.reid import create_reid_encoder
    from boxmot.reid.config import resolve_reid_spec
    from boxmot.structures import Boxes, Detections, Frame

    spec, _ = resolve_reid_spec(str(path))
    encoder = create_reid_encoder(replace(spec, device="cpu", precision="fp32"))
    backend_class = type(encoder._runtime)
    fed: list[torch.Tensor] = []
    forward = backend_class.forward

    def spy(self, batch):
        fed.append(torch.as_tensor(batch).clone())
        return forward(self, batch)

    monkeypatch.setattr(backend_class, "forward", spy)
    n = len(boxes)
    detections = Detections(Boxes(torch.from_numpy(boxes)), torch.ones(n), torch.zeros(n, dtype=torch.int64), "f0")
    (embeddings,) = encoder.encode([Frame(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), "f0")],
                                   [detections])
    return spec, embeddings, fed


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("fmt, runtime", [("onnx", "onnxruntime"), ("onnx", "opencv"), ("torchscript", None)])
def test_boxmot_feeds_the_exported_size_and_gets_dsgl_embeddings(boxmot, exported, checkpoint, monkeypatch,
                                                                  fmt, runtime):
    if runtime is not None:
        monkeypatch.setenv("BOXMOT_REID_BACKEND", runtime)  # BoxMOT's switch between its two ONNX runtimes
    frame, boxes = _demo_frame()
    spec, got, fed = _encode(exported[fmt].output, frame, boxes, monkeypatch)
    assert spec.backend == fmt
    (batch,) = fed
    assert batch.shape == (len(boxes), 3, H, W) and batch.dtype == torch.float32
    assert torch.allclose(batch, _expected_batch(frame, boxes, (H, W)), atol=1e-5)  # the contract as we read it

    model, _ = load_model(checkpoint)
    with torch.no_grad():
        want = model(batch)
    assert got.shape == (len(boxes), DIM)
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.999
    assert float((got - want).abs().max()) <= 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("fmt, runtime", [("torchscript", None), ("onnx", "opencv")])
def test_without_the_sidecar_boxmot_feeds_256x128(boxmot, exported, tmp_path, monkeypatch, fmt, runtime):
    """Only ONNX Runtime reads the size from the graph; TorchScript and OpenCV DNN need the sidecar."""
    if runtime is not None:
        monkeypatch.setenv("BOXMOT_REID_BACKEND", runtime)
    bare = tmp_path / exported[fmt].output.name
    shutil.copy(exported[fmt].output, bare)
    frame, boxes = _demo_frame(2)
    _, _, (batch,) = _encode(bare, frame, boxes, monkeypatch)
    assert batch.shape[2:] == (256, 128)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_boxmot_knows_the_torchscript_width_before_the_first_person(boxmot, exported):
    from boxmot.reid import create_reid_encoder
    from boxmot.reid.config import resolve_reid_spec
    from boxmot.structures import Boxes, Detections, Frame

    spec, _ = resolve_reid_spec(str(exported["torchscript"].output))
    encoder = create_reid_encoder(replace(spec, device="cpu", precision="fp32"))
    assert encoder.embedding_dim == DIM
    empty = Detections(Boxes(torch.zeros(0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), "f0")
    (none,) = encoder.encode([Frame(torch.zeros(3, 48, 48, dtype=torch.uint8), "f0")], [empty])
    assert none.shape == (0, DIM)
