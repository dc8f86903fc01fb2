"""Export a trained model for inference (ONNX or TorchScript) and verify the written file against eager.

The exported graph takes an image batch (N, 3, H, W; ImageNet-normalised, N dynamic) and
returns L2-normalised embeddings (N, d): the eval-mode model of method.md section 2.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from dsgl_cli import __version__
from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.models.checkpoint import load_model
from dsgl_cli.models.reid import ReIDModel
from dsgl_cli.runtime import resolve_device

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TOLERANCE = 1e-4
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass
class ExportReport:
    """What was written and how closely the written file reproduces the eager model."""

    output: Path
    metadata: Path
    format: str
    arch: str
    pooling: str
    feature_dim: int
    height: int
    width: int
    opset: int | None
    max_abs_diff: float
    exporter: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings)."""
        data = asdict(self)
        data["output"], data["metadata"] = str(self.output), str(self.metadata)
        return data


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``logs/model_best.pth.tar`` -> ``logs/model_best.onnx`` (or ``.torchscript.pt``)."""
    name = checkpoint.name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar", ".ckpt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return checkpoint.with_name(name + _SUFFIX[fmt])


def _require_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime or say how to install them."""
    try:
        onnx = importlib.import_module("onnx")
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise DsglError(f"ONNX export needs onnx and onnxruntime ({exc.name or 'onnx'} is missing): "
                        "pip install 'dsgl[export]'") from None
    return onnx, ort


@contextlib.contextmanager
def _exact_math() -> Iterator[None]:
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


def _export_onnx(model: ReIDModel, example: torch.Tensor, output: Path, opset: int) -> str:
    """Write ONNX with a dynamic batch axis: legacy TorchScript exporter, else the dynamo exporter."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(output), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        return "torchscript-onnx"
    except Exception as legacy_exc:  # the legacy exporter is deprecated; try the new one before giving up
        try:
            batch = torch.export.Dim("batch", min=1)
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
            raise DsglError(f"ONNX export failed: {_one_line(legacy_exc)} (dynamo exporter: "
                            f"{_one_line(dynamo_exc)})") from None


def _onnx_opset(output: Path) -> int | None:
    """Opset of the default ONNX domain actually written (the dynamo exporter may raise it)."""
    onnx, _ = _require_onnx()
    model = onnx.load(str(output), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _verify_onnx(output: Path, batch: torch.Tensor) -> torch.Tensor:
    """Check the ONNX graph and run it with onnxruntime on CPU."""
    onnx, ort = _require_onnx()
    onnx.checker.check_model(str(output))
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (result,) = session.run(None, {name: batch.detach().cpu().numpy()})
    return torch.from_numpy(result)


def _export_torchscript(model: ReIDModel, example: torch.Tensor, output: Path) -> str:
    """Trace the eval-mode model (its forward is shape-generic, so the batch stays dynamic)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(output))
    except Exception as exc:
        raise DsglError(f"TorchScript export failed: {_one_line(exc)}") from None
    return "jit.trace"


def _verify_torchscript(output: Path, batch: torch.Tensor) -> torch.Tensor:
    """Load the saved TorchScript file and run it on the verification batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(output), map_location=batch.device)
    loaded.eval()
    with torch.no_grad():
        return loaded(batch).cpu()


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else type(exc).__name__)


def export_model(
    checkpoint: Path,
    fmt: str,
    output: Path | None = None,
    arch: str | None = None,
    pooling: str | None = None,
    height: int | None = None,
    width: int | None = None,
    opset: int = 17,
    device: str = "cpu",
) -> ExportReport:
    """Export the checkpoint's inference model, reload the file, compare with eager (max |diff| <= 1e-4).

    Writes ``output`` and ``<output>.json`` (input size, ImageNet mean/std, feature size,
    arch, pooling, format, opset, max_abs_diff). Raises DsglError when the file disagrees.
    """
    fmt = check_choice(fmt, FORMATS, "export format")
    if fmt == "onnx":
        _require_onnx()
        if not isinstance(opset, int) or not 7 <= opset <= 25:
            raise DsglError(f"--opset must be an integer between 7 and 25, got {opset!r}", exit_code=2)
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint, fmt)
    dev = resolve_device(device)

    model, info = load_model(checkpoint, arch=arch, pooling=pooling, height=height, width=width)
    model = model.to(dev).eval()
    h, w = info.height, info.width
    output.parent.mkdir(parents=True, exist_ok=True)

    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, h, w, generator=gen).to(dev)
    batch = torch.randn(3, 3, h, w, generator=gen).to(dev)
    with torch.no_grad():
        if fmt == "onnx":
            exporter = _export_onnx(model, example, output, opset)
        else:
            exporter = _export_torchscript(model, example, output)
        with _exact_math():
            expected = model(batch).cpu()
            got = _verify_onnx(output, batch) if fmt == "onnx" else _verify_torchscript(output, batch)

    if got.shape != expected.shape:
        output.unlink(missing_ok=True)
        raise DsglError(f"exported {fmt} model returns shape {tuple(got.shape)}, eager {tuple(expected.shape)}; "
                        "file removed")
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        output.unlink(missing_ok=True)
        raise DsglError(f"exported {fmt} model differs from the eager model by {diff:.2e} (> {TOLERANCE:g}); "
                        "file removed")

    metadata = output.with_name(output.name + ".json")
    report = ExportReport(
        output=output, metadata=metadata, format=fmt, arch=info.arch, pooling=info.pooling,
        feature_dim=model.out_dim, height=h, width=w, opset=_onnx_opset(output) if fmt == "onnx" else None,
        max_abs_diff=diff, exporter=exporter, warnings=list(info.warnings) + list(info.notes),
    )
    meta = {
        "format": fmt,
        "exporter": exporter,
        "opset": report.opset,
        "arch": report.arch,
        "pooling": report.pooling,
        "features": info.features,
        "feature_dim": report.feature_dim,
        "normalized": True,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, h, w], "height": h, "width": w,
                  "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "preprocess": "RGB scaled to [0, 1], then (x - mean) / std"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", report.feature_dim]},
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "checkpoint": str(checkpoint),
        "checkpoint_format": info.format,
        "epoch": info.epoch,
        "dsgl_version": __version__,
    }
    metadata.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return report
