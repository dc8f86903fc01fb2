"""Writing ONNX and TorchScript files and running the written file again, so export_model can compare it with eager."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from dsgl_cli.errors import DsglError

INPUT_NAME = "images"  # BoxMOT's OpenCV-DNN path feeds its ONNX input by this name
OUTPUT_NAME = "embeddings"
BATCH_AXIS = "batch"  # BoxMOT pins ONNX Runtime's free dimension by this name when it batches in buckets


def require_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime or say how to install them."""
    try:
        onnx = importlib.import_module("onnx")
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise DsglError(f"ONNX export needs onnx and onnxruntime ({exc.name or 'onnx'} is missing): "
                        "pip install 'dsgl[export]'") from None
    return onnx, ort


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """Disable TF32 while verifying so GPU rounding does not pass for an export error."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence library loggers below ERROR while exporting (their fallbacks are not our user's concern)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def one_line(exc: BaseException) -> str:
    """First line of an exception message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else type(exc).__name__)


def export_onnx(model: nn.Module, example: torch.Tensor, output: Any, opset: int) -> str:
    """Write fp32 ONNX with a dynamic batch axis: legacy TorchScript exporter, else the dynamo exporter."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(output), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                do_constant_folding=True,
            )
        return "torchscript-onnx"
    except Exception as legacy_exc:  # the legacy exporter is deprecated; try the new one before giving up
        try:
            batch = torch.export.Dim(BATCH_AXIS, min=1)
            with warnings.catch_warnings(), _quiet_loggers("onnxscript", "torch.onnx"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (example,), dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},), verbose=False,
                )
                if program is None:
                    raise RuntimeError("the dynamo exporter returned no program")
                program.save(str(output))
            return "dynamo"
        except Exception as dynamo_exc:
            raise DsglError(f"ONNX export failed: {one_line(legacy_exc)} (dynamo exporter: "
                            f"{one_line(dynamo_exc)})") from None


def onnx_opset(output: Any) -> int | None:
    """Opset of the default ONNX domain actually written (the dynamo exporter may raise it)."""
    onnx, _ = require_onnx()
    model = onnx.load(str(output), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def verify_onnx(output: Any, batch: torch.Tensor) -> torch.Tensor:
    """Check the ONNX graph and run it with onnxruntime on CPU."""
    onnx, ort = require_onnx()
    onnx.checker.check_model(str(output))
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (result,) = session.run(None, {name: batch.detach().cpu().numpy()})
    return torch.from_numpy(result)


class _Embedder(nn.Module):
    """Scripted shell around the traced model, so the file itself declares its embedding width.

    BoxMOT asks a TorchScript model for ``embedding_dim`` before the first crop (a frame with no
    person needs an empty N x d array); a traced module keeps no plain attributes, a scripted one does.
    """

    def __init__(self, traced: nn.Module, embedding_dim: int) -> None:
        super().__init__()
        self.model = traced
        self.embedding_dim = embedding_dim  # scripting infers int from the value and keeps it in the file

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def export_torchscript(model: nn.Module, example: torch.Tensor, output: Any, embedding_dim: int) -> str:
    """Trace the eval-mode model (its forward is shape-generic, so the batch stays dynamic) and script a shell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            scripted = torch.jit.script(_Embedder(traced, int(embedding_dim)))
            scripted.save(str(output))
    except Exception as exc:
        raise DsglError(f"TorchScript export failed: {one_line(exc)}") from None
    return "jit.trace"


def verify_torchscript(output: Any, batch: torch.Tensor) -> torch.Tensor:
    """Load the saved TorchScript file and run it on the verification batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(output), map_location=batch.device)
    loaded.eval()
    with torch.no_grad():
        return loaded(batch).cpu()
