"""``dsgl export``: ONNX or TorchScript inference models that verify themselves against eager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsgl_cli.options import Arch, Device, Height, JsonOut, Pooling, Width


def register(app: typer.Typer, handle_errors: Callable) -> None:
    @app.command("export")
    @handle_errors
    def export(
        checkpoint: Annotated[Path, typer.Argument(help="A dsgl checkpoint or the authors' model_best.pth.tar.", show_default=False)],
        format: Annotated[str, typer.Option("--format", help="onnx | torchscript.")] = "onnx",
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: beside the checkpoint).", show_default=False)] = None,
        arch: Arch = None,
        pooling_type: Pooling = None,
        height: Height = None,
        width: Width = None,
        opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
        device: Device = None,
        json_out: JsonOut = None,
    ) -> None:
        """Write an inference model (images in, L2-normalised embeddings out) and check it against eager.

        Example: dsgl export runs/demo/model_best.pth --format onnx --output reid.onnx
        """
        from dsgl_cli.workflows import run_export

        report = run_export(checkpoint, format, output, arch=arch, pooling=pooling_type, height=height,
                            width=width, opset=opset, device=device or "auto")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2))
