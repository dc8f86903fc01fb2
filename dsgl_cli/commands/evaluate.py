"""``dsgl evaluate``: mAP / CMC / mINP of a checkpoint on query vs gallery (method.md 6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from dsgl_cli.commands.common import argument, command, load_for_inference, metrics_table, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, info, stage
from dsgl_cli.outputs import check_output, check_output_dir, write_json

SETTINGS = ("dataset", "data_dir", "arch", "pooling_type", "height", "width", "workers", "flip", "amp", "device")


@dataclass
class EvaluationReport:
    """The numbers `dsgl evaluate` prints, for --json (fractions in [0, 1])."""

    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float
    dataset: str
    checkpoint: str
    arch: str
    pooling: str
    flip: bool
    num_query: int
    num_gallery: int
    rerank: Optional[dict[str, float]] = None
    ranked_lists: Optional[list[str]] = None


def run_evaluation(checkpoint: Path, cfg: RunConfig, rerank: bool = False, show: int = 0,
                   show_dir: Optional[Path] = None) -> EvaluationReport:
    """Evaluate a checkpoint on query vs gallery; optionally re-rank and draw ranked lists."""
    import numpy as np

    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.evaluation.retrieval import evaluate_model
    from dsgl_cli.runtime import resolve_device

    device = resolve_device(cfg.device)
    model, meta = load_for_inference(checkpoint, cfg)
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    model = model.to(device)
    total = len(dataset.query) + len(dataset.gallery)
    with stage("evaluate", total=total) as bar:
        result = evaluate_model(model, dataset.query, dataset.gallery, meta.height, meta.width, device,
                                workers=cfg.data.workers, flip=cfg.eval.flip, amp=cfg.amp, rerank=rerank,
                                advance=bar.advance)
    rows = [("plain", result.metrics)]
    if result.rerank_metrics is not None:
        rows.append(("re-ranked", result.rerank_metrics))
    console.print(metrics_table(f"{cfg.data.dataset}: {meta.arch} ({meta.pooling}) from {checkpoint}", rows))
    m = result.metrics
    report = EvaluationReport(mAP=m.mAP, rank1=m.rank1, rank5=m.rank5, rank10=m.rank10, mINP=m.mINP,
                              dataset=cfg.data.dataset, checkpoint=str(checkpoint), arch=meta.arch,
                              pooling=meta.pooling, flip=cfg.eval.flip, num_query=len(dataset.query),
                              num_gallery=len(dataset.gallery),
                              rerank=result.rerank_metrics.to_dict() if result.rerank_metrics else None)
    if show > 0:
        from dsgl_cli.evaluation.ranked_lists import save_ranked_lists

        folder = show_dir or Path(checkpoint).parent / "ranked_lists"
        dist = result.rerank_distmat if result.rerank_distmat is not None else result.distmat.cpu().numpy()
        files = save_ranked_lists(
            dist, [r.path for r in dataset.query], [r.path for r in dataset.gallery],
            np.array([r.pid for r in dataset.query]), np.array([r.pid for r in dataset.gallery]),
            np.array([r.camid for r in dataset.query]), np.array([r.camid for r in dataset.gallery]),
            folder, num_queries=show)
        info(f"{len(files)} ranked lists written to {folder}")
        report.ranked_lists = [str(f) for f in files]
    return report


def evaluate(**kwargs: Any) -> None:
    """Evaluate a checkpoint; architecture and pooling come from dsgl checkpoints, flags serve the authors' format.

    Example: dsgl evaluate model_best.pth.tar -d market1501 -a resnet50 --pooling-type gem --rerank
    """
    flags, own = split(kwargs, SETTINGS)
    check_output(own["json_out"], "--json", [own["checkpoint"]])
    if own["show"] > 0:
        check_output_dir(own["show_dir"] or Path(own["checkpoint"]).parent / "ranked_lists", "--show-dir")
    report = run_evaluation(own["checkpoint"], resolve(flags, own["config"]), rerank=own["rerank"],
                            show=own["show"], show_dir=own["show_dir"])
    if own["json_out"] is not None:
        write_json(own["json_out"], report)


def register(app: typer.Typer) -> None:
    command(app, "evaluate", evaluate, SETTINGS, own=[
        argument("checkpoint", Path, "A dsgl checkpoint or the authors' model_best.pth.tar."),
        option("rerank", bool, "--rerank", default=False,
               help="Also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)."),
        option("show", int, "--show", default=0, help="Save N ranked-list pictures (query + top-10)."),
        option("show_dir", Optional[Path], "--show-dir",
               help="Where --show writes (default: <checkpoint dir>/ranked_lists)."),
    ])
