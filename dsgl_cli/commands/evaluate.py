"""``dsgl evaluate``: mAP / CMC / mINP of a checkpoint on query vs gallery (method.md section 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsgl_cli.options import Arch, ConfigFile, DataDir, Dataset, Device, Flip, Height, JsonOut, Pooling, Width, Workers


def register(app: typer.Typer, handle_errors: Callable) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate(
        checkpoint: Annotated[Path, typer.Argument(help="A dsgl checkpoint or the authors' model_best.pth.tar.",
                                                   show_default=False)],
        dataset: Dataset = None,
        data_dir: DataDir = None,
        arch: Arch = None,
        pooling_type: Pooling = None,
        height: Height = None,
        width: Width = None,
        rerank: Annotated[bool, typer.Option("--rerank", help="Also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")] = False,
        flip: Flip = None,
        show: Annotated[int, typer.Option("--show", help="Save N ranked-list pictures (query + top-10).")] = 0,
        show_dir: Annotated[Optional[Path], typer.Option("--show-dir", help="Where --show writes (default: <checkpoint dir>/ranked_lists).", show_default=False)] = None,
        workers: Workers = None,
        device: Device = None,
        config: ConfigFile = None,
        json_out: JsonOut = None,
    ) -> None:
        """Evaluate a checkpoint; architecture and pooling come from dsgl checkpoints, flags serve the authors' format.

        Example: dsgl evaluate model_best.pth.tar -d market1501 -a resnet50 --pooling-type gem --rerank
        """
        from dsgl_cli.workflows import run_evaluation

        flags = dict(dataset=dataset, data_dir=data_dir, workers=workers, device=device, flip=flip)
        result = run_evaluation(checkpoint, flags, config, arch=arch, pooling=pooling_type, height=height,
                                width=width, rerank=rerank, show=show, show_dir=show_dir)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2))
