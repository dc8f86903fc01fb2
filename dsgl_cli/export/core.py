"""Export a trained model for inference (ONNX or TorchScript) and verify the written file against eager.

The exported graph takes an image batch (N, 3, H, W; ImageNet-normalised RGB in fp32, N dynamic)
and returns L2-normalised embeddings (N, d): the eval-mode model of method.md section 2. Beside
it goes ``<file>.metadata.json`` (contract.py says why that name and what BoxMOT reads from it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsgl_cli import __version__
from dsgl_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.export import writers
from dsgl_cli.export.contract import FORMATS, default_output, metadata_path, naming_warnings, tracker_fields
from dsgl_cli.models.checkpoint import CheckpointInfo, load_model
from dsgl_cli.runtime import resolve_device

TOLERANCE = 1e-4


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


def _export_device(fmt: str, device: str, notes: list[str]) -> torch.device:
    """ONNX on the asked device; TorchScript always on the CPU, where any machine can load it.

    BoxMOT loads TorchScript without ``map_location`` and never moves it, so a file saved on a
    GPU would not even load on a CPU-only machine, nor run at BoxMOT's default ``--device cpu``.
    """
    dev = resolve_device(device)
    if fmt == "torchscript" and dev.type != "cpu":
        if (device or "auto").strip().lower() != "auto":
            notes.append(f"TorchScript is written on the CPU whatever --device says ({device} ignored), so that "
                         "it loads on any machine; for a GPU tracker export ONNX")
        return torch.device("cpu")
    return dev


def _remove(output: Path) -> None:
    """Delete a rejected file and any sidecar a former export left beside it (it would describe nothing)."""
    output.unlink(missing_ok=True)
    metadata_path(output).unlink(missing_ok=True)


def _metadata(report: ExportReport, info: CheckpointInfo, checkpoint: Path) -> dict[str, Any]:
    """dsgl's description of the file, then the keys BoxMOT reads (one file serves both)."""
    h, w = report.height, report.width
    return {
        "format": report.format,
        "exporter": report.exporter,
        "opset": report.opset,
        "arch": report.arch,
        "pooling": report.pooling,
        "features": info.features,
        "feature_dim": report.feature_dim,
        "normalized": True,
        "input": {"name": writers.INPUT_NAME, "shape": [writers.BATCH_AXIS, 3, h, w], "height": h, "width": w,
                  "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "preprocess": "RGB scaled to [0, 1], then (x - mean) / std"},
        "output": {"name": writers.OUTPUT_NAME, "shape": [writers.BATCH_AXIS, report.feature_dim]},
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "max_abs_diff": report.max_abs_diff,
        "tolerance": TOLERANCE,
        "checkpoint": str(checkpoint),
        "checkpoint_format": info.format,
        "epoch": info.epoch,
        "dsgl_version": __version__,
        **tracker_fields(report.arch, h, w),
    }


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

    Writes ``output`` (default: beside the checkpoint, ``.onnx`` or ``.torchscript``) and
    ``<output>.metadata.json`` (input size, ImageNet mean/std, feature size, arch, pooling,
    format, opset, max_abs_diff, and BoxMOT's keys). Raises DsglError when the file disagrees.
    """
    fmt = check_choice(fmt, FORMATS, "export format")
    if fmt == "onnx":
        writers.require_onnx()
        if not isinstance(opset, int) or not 7 <= opset <= 25:
            raise DsglError(f"--opset must be an integer between 7 and 25, got {opset!r}", exit_code=2)
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint, fmt)
    notes: list[str] = naming_warnings(output, fmt)
    dev = _export_device(fmt, device, notes)

    model, info = load_model(checkpoint, arch=arch, pooling=pooling, height=height, width=width)
    model = model.to(dev).eval()
    h, w = info.height, info.width
    output.parent.mkdir(parents=True, exist_ok=True)

    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, h, w, generator=gen).to(dev)
    batch = torch.randn(3, 3, h, w, generator=gen).to(dev)
    with torch.no_grad():
        if fmt == "onnx":
            exporter = writers.export_onnx(model, example, output, opset)
        else:
            exporter = writers.export_torchscript(model, example, output, model.out_dim)
        with writers.exact_math():
            expected = model(batch).cpu()
            got = (writers.verify_onnx(output, batch) if fmt == "onnx"
                   else writers.verify_torchscript(output, batch))

    if got.shape != expected.shape:
        _remove(output)
        raise DsglError(f"exported {fmt} model returns shape {tuple(got.shape)}, eager {tuple(expected.shape)}; "
                        "file removed")
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        _remove(output)
        raise DsglError(f"exported {fmt} model differs from the eager model by {diff:.2e} (> {TOLERANCE:g}); "
                        "file removed")

    report = ExportReport(
        output=output, metadata=metadata_path(output), format=fmt, arch=info.arch, pooling=info.pooling,
        feature_dim=model.out_dim, height=h, width=w, opset=writers.onnx_opset(output) if fmt == "onnx" else None,
        max_abs_diff=diff, exporter=exporter, warnings=list(info.warnings) + list(info.notes) + notes,
    )
    report.metadata.write_text(json.dumps(_metadata(report, info, checkpoint), indent=2) + "\n", encoding="utf-8")
    return report
