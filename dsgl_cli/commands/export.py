"""``dsgl export``: ONNX or TorchScript inference models that verify themselves against eager."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from dsgl_cli.commands.common import argument, command, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import info, warn
from dsgl_cli.errors import check_choice
from dsgl_cli.export.contract import FORMATS, default_output, metadata_path
from dsgl_cli.outputs import check_output, write_json

SETTINGS = ("arch", "pooling_type", "height", "width", "device")


def run_export(checkpoint: Path, cfg: RunConfig, fmt: str, output: Optional[Path], opset: int) -> Any:
    """Export and verify; print what was written and how close it is to eager."""
    from dsgl_cli.export import export_model

    given = cfg.explicit
    report = export_model(
        checkpoint, fmt, output,
        arch=cfg.model.arch if "arch" in given else None,
        pooling=cfg.model.pooling_type if "pooling_type" in given else None,
        height=cfg.data.height if "height" in given else None,
        width=cfg.data.width if "width" in given else None,
        opset=opset, device=cfg.device)
    for message in report.warnings:
        warn(message)
    info(f"wrote {report.output} ({report.format}, {report.arch}/{report.pooling}, input "
         f"{report.height}x{report.width}, {report.feature_dim}-d embeddings) and {report.metadata}")
    info(f"verified against the eager model: max |difference| = {report.max_abs_diff:.2e} (limit 1e-4)")
    return report


def export(**kwargs: Any) -> None:
    """Write an inference model (images in, L2-normalised embeddings out) and check it against eager.

    Example: dsgl export runs/demo/model_best.pth --format onnx --output reid.onnx
    """
    flags, own = split(kwargs, SETTINGS)
    checkpoint, fmt = own["checkpoint"], check_choice(own["format"], FORMATS, "--format")
    output = own["output"] or default_output(Path(checkpoint), fmt)
    sidecar = metadata_path(output)
    for flag, path in (("--json", own["json_out"]), ("--output", output), ("--output's sidecar", sidecar)):
        check_output(path, flag, [checkpoint])
    report = run_export(checkpoint, resolve(flags, own["config"]), fmt, output, own["opset"])
    if own["json_out"] is not None:
        write_json(own["json_out"], report.as_dict())


def register(app: typer.Typer) -> None:
    command(app, "export", export, SETTINGS, own=[
        argument("checkpoint", Path, "A dsgl checkpoint or the authors' model_best.pth.tar."),
        option("format", str, "--format", default="onnx", help=f"One of: {', '.join(FORMATS)}."),
        option("output", Optional[Path], "--output", "-o", help="Output file (default: beside the checkpoint)."),
        option("opset", int, "--opset", default=17, help="ONNX opset."),
    ])
