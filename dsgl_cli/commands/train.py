"""``dsgl train``: unsupervised DSGL training with the reference script's flags (method.md section 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsgl_cli.options import (
    Arch, ConfigFile, DataDir, Dataset, Device, Flip, Height, JsonOut, Pooling, Pretrained, Width, Workers,
)

Int = Optional[int]
Float = Optional[float]


def _opt(*names: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, show_default=False)


def register(app: typer.Typer, handle_errors: Callable) -> None:
    @app.command("train")
    @handle_errors
    def train(
        dataset: Dataset = None,
        data_dir: DataDir = None,
        batch_size: Annotated[Int, _opt("-b", "--batch-size", help="Global batch size (default 64).")] = None,
        arch: Arch = None,
        iters: Annotated[Int, _opt("--iters", help="Iterations per epoch (default 400).")] = None,
        momentum: Annotated[Float, _opt("--momentum", help="Memory momentum m (default 0.1).")] = None,
        eps: Annotated[Float, _opt("--eps", help="DBSCAN eps on the Jaccard distance (default 0.6).")] = None,
        num_instances: Annotated[Int, _opt("--num-instances", help="Images per pseudo identity in a batch (default 16).")] = None,
        pooling_type: Pooling = None,
        memorybank: Annotated[Optional[str], _opt("--memorybank", help="DLhybrid | CM | CMhard (default DLhybrid).")] = None,
        epochs: Annotated[Int, _opt("--epochs", help="Epochs (default 50).")] = None,
        logs_dir: Annotated[Optional[Path], _opt("--logs-dir", help="Run directory (default runs/<dataset>).")] = None,
        step_size: Annotated[Int, _opt("--step-size", help="StepLR step in epochs (default 20).")] = None,
        workers: Workers = None,
        height: Height = None,
        width: Width = None,
        k1: Annotated[Int, _opt("--k1", help="k-reciprocal neighbourhood size (default 30).")] = None,
        k2: Annotated[Int, _opt("--k2", help="Local query expansion size (default 6).")] = None,
        features: Annotated[Int, _opt("--features", help="Embedding size; 0 = none (default 0).")] = None,
        dropout: Annotated[Float, _opt("--dropout", help="Dropout after the neck (default 0).")] = None,
        lr: Annotated[Float, _opt("--lr", help="Adam learning rate (default 0.00035).")] = None,
        weight_decay: Annotated[Float, _opt("--weight-decay", help="Adam weight decay (default 5e-4).")] = None,
        seed: Annotated[Int, _opt("--seed", help="Random seed (default 1).")] = None,
        print_freq: Annotated[Int, _opt("--print-freq", help="Log every N iterations (default 10).")] = None,
        eval_step: Annotated[Int, _opt("--eval-step", help="Evaluate every N epochs (default 1).")] = None,
        temp: Annotated[Float, _opt("--temp", help="Temperature T (default 0.05).")] = None,
        min_samples: Annotated[Int, _opt("--min-samples", help="DBSCAN min_samples (default 4).")] = None,
        resume: Annotated[Optional[Path], _opt("--resume", help="Continue a run from its checkpoint.pth (or run dir).")] = None,
        pretrained: Pretrained = None,
        amp: Annotated[Optional[bool], _opt("--amp/--no-amp", help="bf16/fp16 autocast + channels_last on CUDA (default on).")] = None,
        flip: Flip = None,
        sync_bn: Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm across ranks under torchrun.")] = False,
        device: Device = None,
        config: ConfigFile = None,
        json_out: JsonOut = None,
    ) -> None:
        """Train a re-ID model without labels (DSGL).

        Examples: [bold]dsgl train -d demo[/bold] (built-in data, minutes on a CPU);
        dsgl train -d msmt17 --eps 0.7 --epochs 60 --step-size 25
        """
        from dsgl_cli.workflows import run_training

        flags = dict(
            dataset=dataset, data_dir=data_dir, batch_size=batch_size, arch=arch, iters=iters, momentum=momentum,
            eps=eps, num_instances=num_instances, pooling_type=pooling_type, memorybank=memorybank,
            epochs=epochs, logs_dir=logs_dir, step_size=step_size, workers=workers, height=height, width=width,
            k1=k1, k2=k2, features=features, dropout=dropout, lr=lr, weight_decay=weight_decay, seed=seed,
            print_freq=print_freq, eval_step=eval_step, temp=temp, min_samples=min_samples, resume=resume,
            pretrained=pretrained, amp=amp, flip=flip, device=device,
        )
        summary = run_training(flags, config, sync_bn=sync_bn)
        if json_out is not None and summary is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(summary, indent=2))
