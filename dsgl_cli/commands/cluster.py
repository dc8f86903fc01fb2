"""``dsgl cluster``: pseudo labels of the train split and their quality, at one eps or a sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsgl_cli.options import Arch, ConfigFile, DataDir, Dataset, Device, Height, JsonOut, Pooling, Pretrained, Width, Workers


def register(app: typer.Typer, handle_errors: Callable) -> None:
    @app.command("cluster")
    @handle_errors
    def cluster(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint to extract features with; omit to use --pretrained weights.", show_default=False)] = None,
        dataset: Dataset = None,
        data_dir: DataDir = None,
        eps: Annotated[Optional[float], typer.Option("--eps", help="DBSCAN eps (default 0.6).", show_default=False)] = None,
        eps_sweep: Annotated[Optional[str], typer.Option("--eps-sweep", help="START:STOP:STEP, e.g. 0.4:0.8:0.05 (stop included).", show_default=False)] = None,
        k1: Annotated[Optional[int], typer.Option("--k1", help="k-reciprocal neighbourhood (default 30).", show_default=False)] = None,
        k2: Annotated[Optional[int], typer.Option("--k2", help="Local query expansion (default 6).", show_default=False)] = None,
        min_samples: Annotated[Optional[int], typer.Option("--min-samples", help="DBSCAN min_samples (default 4).", show_default=False)] = None,
        output: Annotated[Optional[Path], typer.Option("--output", help="Write path,pseudo_label,camera CSV (at --eps).", show_default=False)] = None,
        arch: Arch = None,
        pooling_type: Pooling = None,
        pretrained: Pretrained = None,
        height: Height = None,
        width: Width = None,
        workers: Workers = None,
        device: Device = None,
        config: ConfigFile = None,
        json_out: JsonOut = None,
    ) -> None:
        """Cluster the train split and report pseudo-label quality; a sweep helps choose --eps for new data.

        Example: dsgl cluster runs/demo/model_best.pth -d demo --eps-sweep 0.4:0.8:0.05
        """
        from dsgl_cli.workflows import run_clustering

        flags = dict(dataset=dataset, data_dir=data_dir, eps=eps, k1=k1, k2=k2, min_samples=min_samples,
                     arch=arch, pooling_type=pooling_type, pretrained=pretrained, height=height, width=width,
                     workers=workers, device=device)
        result = run_clustering(checkpoint, flags, config, eps_sweep=eps_sweep, output=output)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2))
