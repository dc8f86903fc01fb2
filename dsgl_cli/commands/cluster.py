"""``dsgl cluster``: pseudo labels of the train split and their quality, at one eps or a sweep."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from dsgl_cli.commands.common import argument, command, load_for_inference, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, info, stage
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, write_json

SETTINGS = ("dataset", "data_dir", "eps", "k1", "k2", "min_samples", "arch", "pooling_type", "pretrained",
            "height", "width", "workers", "amp", "device")


@dataclass
class ClusteringReport:
    """One row per eps of the sweep (pseudo-label quality against the train split's hidden ids)."""

    dataset: str
    num_images: int
    seconds_distance: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_sweep(text: str) -> list[float]:
    """'0.4:0.8:0.05' -> [0.4, 0.45, ..., 0.8] (stop included); every value must lie in (0, 1)."""
    parts = text.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise DsglError(f"--eps-sweep: expected START:STOP:STEP such as 0.4:0.8:0.05, got '{text}'",
                        exit_code=2) from None
    if step <= 0 or stop < start:
        raise DsglError(f"--eps-sweep {text}: the sweep is empty (need STEP > 0 and STOP >= START)", exit_code=2)
    count = int(round((stop - start) / step + 1e-9)) + 1
    values = [round(start + i * step, 6) for i in range(count)]
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise DsglError(f"--eps-sweep {text}: every eps must satisfy 0 < eps < 1 (got {bad[0]})", exit_code=2)
    return values


def run_clustering(checkpoint: Optional[Path], cfg: RunConfig, eps_sweep: Optional[str] = None,
                   output: Optional[Path] = None) -> ClusteringReport:
    """Extract train features once, build the Jaccard distance once, cluster at each eps."""
    import numpy as np

    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.jaccard import compute_jaccard_distance
    from dsgl_cli.clustering.quality import label_quality
    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.data.transforms import test_transform
    from dsgl_cli.features import extract_features
    from dsgl_cli.models.reid import build_model
    from dsgl_cli.runtime import resolve_device

    sweep = parse_sweep(eps_sweep) if eps_sweep else None
    device = resolve_device(cfg.device)
    if checkpoint is not None:
        model, meta = load_for_inference(checkpoint, cfg)
        height, width = meta.height, meta.width
    else:
        model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                            cfg.model.pretrained)
        height, width = cfg.data.height, cfg.data.width
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    model = model.to(device)
    paths = [r.path for r in dataset.train]
    with stage("extract", total=len(paths)) as bar:
        feats = extract_features(model, paths, test_transform(height, width), device,
                                 workers=cfg.data.workers, amp=cfg.amp, advance=bar.advance)
    eps_values = sweep or [cfg.cluster.eps]
    t0 = time.perf_counter()
    with stage("jaccard distance", total=None):
        distance = compute_jaccard_distance(feats, k1=cfg.cluster.k1, k2=cfg.cluster.k2,
                                            max_distance=max(0.95, max(eps_values)))
    seconds_distance = time.perf_counter() - t0
    true_ids = np.array([r.pid for r in dataset.train])
    report = ClusteringReport(cfg.data.dataset, len(paths), seconds_distance)
    chosen = None
    for eps in eps_values:
        labels = dbscan(distance, eps=eps, min_samples=cfg.cluster.min_samples)
        report.rows.append({"eps": eps, **label_quality(labels, true_ids).to_dict()})
        if abs(eps - cfg.cluster.eps) < 1e-9 or chosen is None:
            chosen = (eps, labels)
    table = Table(title=f"{cfg.data.dataset} train split: {len(paths):,} images, "
                        f"{len(set(true_ids.tolist()))} true identities (distance {seconds_distance:.1f}s)")
    for col in ("eps", "clusters", "outliers", "precision", "recall", "F", "ARI", "NMI"):
        table.add_column(col, justify="right")
    for r in report.rows:
        table.add_row(f"{r['eps']:.3g}", str(r["num_clusters"]), str(r["num_outliers"]), f"{r['precision']:.3f}",
                      f"{r['recall']:.3f}", f"{r['f_score']:.3f}", f"{r['ari']:.3f}", f"{r['nmi']:.3f}")
    console.print(table)
    if output is not None and chosen is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "pseudo_label", "camera"])
            for rec, label in zip(dataset.train, chosen[1]):
                writer.writerow([rec.path, int(label), rec.camid + 1])
        info(f"pseudo labels at eps {chosen[0]} written to {output}")
    return report


def cluster(**kwargs: Any) -> None:
    """Cluster the train split and report pseudo-label quality; a sweep helps choose --eps for new data.

    Example: dsgl cluster runs/demo/model_best.pth -d demo --eps-sweep 0.4:0.8:0.05
    """
    flags, own = split(kwargs, SETTINGS)
    for flag, key in (("--json", "json_out"), ("--output", "output")):
        check_output(own[key], flag, [own["checkpoint"]])
    report = run_clustering(own["checkpoint"], resolve(flags, own["config"]), eps_sweep=own["eps_sweep"],
                            output=own["output"])
    if own["json_out"] is not None:
        write_json(own["json_out"], report)


def register(app: typer.Typer) -> None:
    command(app, "cluster", cluster, SETTINGS, own=[
        argument("checkpoint", Optional[Path], "Checkpoint to extract features with; omit to use --pretrained weights.",
                 default=None),
        option("eps_sweep", Optional[str], "--eps-sweep", help="START:STOP:STEP, e.g. 0.4:0.8:0.05 (stop included)."),
        option("output", Optional[Path], "--output", help="Write path,pseudo_label,camera CSV (at --eps)."),
    ])
