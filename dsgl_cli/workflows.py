"""Entry points shared by the CLI commands: a config in, plain typed engine calls out.

Library code below this layer never sees flags or the config file; this layer never
computes anything itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from dsgl_cli.config import RunConfig, build_config
from dsgl_cli.console import console, info
from dsgl_cli.errors import DsglError
from dsgl_cli.runtime import resolve_device, seed_everything


def _flat_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's resolved config as a preset layer (sections flattened, run paths dropped)."""
    flat: dict[str, Any] = {}
    for section in ("data", "model", "cluster", "train"):
        flat.update(saved.get(section, {}))
    return flat


def _settings_table(cfg: RunConfig, device: str, world_size: int, run_dir: Path) -> Table:
    table = Table(title="dsgl train", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("data", f"{cfg.data.dataset} ({cfg.data.data_dir}) at {cfg.data.height}x{cfg.data.width}"),
        ("model", f"{cfg.model.arch}, {cfg.model.pooling_type} pooling, features {cfg.model.features}, "
                  f"init {cfg.model.pretrained}"),
        ("cluster", f"eps {cfg.cluster.eps}, k1 {cfg.cluster.k1}, k2 {cfg.cluster.k2}"),
        ("train", f"{cfg.train.memorybank}, {cfg.train.epochs} epochs x {cfg.train.iters} iters, batch "
                  f"{cfg.train.batch_size} ({cfg.train.num_instances} per identity), lr {cfg.train.lr}"),
        ("device", f"{device}, world size {world_size}"),
        ("run dir", str(run_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def run_training(flags: dict[str, Any], config_file: Optional[Path], sync_bn: bool = False) -> dict[str, Any]:
    """Resolve the config, set up the run (resuming if asked) and train."""
    import torch

    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.training.distributed import Distributed
    from dsgl_cli.training.run_dir import RunDir, choose_run_dir
    from dsgl_cli.training.trainer import Trainer
    from dsgl_cli.models import build_model
    from dsgl_cli.models.checkpoint import load_checkpoint

    presets = None
    saved = None
    resume = flags.get("resume")
    if resume is not None:
        resume = Path(resume)
        if resume.is_dir():
            resume = resume / "checkpoint.pth"
        flags["resume"] = resume
        saved = load_checkpoint(resume)
        presets = _flat_config((saved.get("extra") or {}).get("config") or {})
        if not presets:
            raise DsglError(f"--resume {resume}: not a dsgl training checkpoint (no saved run settings)")
    cfg = build_config(flags, config_file, presets=presets)
    device = resolve_device(cfg.device)
    dist = Distributed.from_env(device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        dist.local_batch(cfg.train.batch_size, cfg.train.num_instances)  # -b is global: a bad split fails early
        seed_everything(cfg.train.seed)
        if dist.is_main:
            dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)  # rank 0 writes the demo set
        dist.barrier()
        if not dist.is_main:
            dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
        run_path = choose_run_dir(cfg.logs_dir, cfg.data.dataset, cfg.resume) if dist.is_main else None
        run_path = dist.broadcast_object(run_path)
        run_dir = RunDir(run_path, enabled=dist.is_main)
        pretrained = "none" if cfg.resume is not None else cfg.model.pretrained
        model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                            pretrained).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if dist.is_main:
            console.print(_settings_table(cfg, str(device), dist.world_size, run_path))
            if getattr(model, "init_report", None) is not None:
                info(f"initial weights: {model.init_report}")
        if dist.active:  # same initial weights everywhere (above); distinct augmentation streams per rank
            seed_everything(cfg.train.seed + 1000003 * dist.rank)
        trainer = Trainer(cfg, dataset, model, device, run_dir, dist=dist, sync_bn=sync_bn)
        if cfg.resume is not None:
            trainer.resume(cfg.resume, saved)
        summary = trainer.fit()
    finally:
        dist.shutdown()
    if dist.is_main:
        _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    rows = [r for r in summary["rows"] if "mAP" in r]
    table = Table(title="evaluation per epoch")
    for col in ("epoch", "mAP", "rank-1", "rank-5", "rank-10", "clusters", "outliers"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["epoch"]), f"{r['mAP']:.1%}", f"{r['rank1']:.1%}", f"{r['rank5']:.1%}",
                      f"{r['rank10']:.1%}", str(r.get("num_clusters", "-")), str(r.get("num_outliers", "-")))
    console.print(table)
    info(f"best mAP {summary['best_mAP']:.1%}; checkpoints and metrics in {summary['run_dir']}")


def _load_for_inference(checkpoint: Path, arch: Optional[str], pooling: Optional[str], height: Optional[int],
                        width: Optional[int]):
    """A checkpoint's eval-mode model and its info, with its warnings printed."""
    from dsgl_cli.console import warn
    from dsgl_cli.models.checkpoint import load_model

    model, meta = load_model(checkpoint, arch=arch, pooling=pooling, height=height, width=width)
    for message in meta.get("warnings", []):
        warn(message)
    for message in meta.get("notes", []):
        info(f"note: {message}")
    return model, meta


def _metrics_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    for col in ("", "mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"):
        table.add_column(col, justify="right")
    for name, m in rows:
        table.add_row(name, f"{m['mAP']:.1%}", f"{m['rank1']:.1%}", f"{m['rank5']:.1%}", f"{m['rank10']:.1%}",
                      f"{m['mINP']:.1%}")
    return table


def run_evaluation(checkpoint: Path, flags: dict[str, Any], config_file: Optional[Path], arch: Optional[str],
                   pooling: Optional[str], height: Optional[int], width: Optional[int], rerank: bool = False,
                   show: int = 0, show_dir: Optional[Path] = None) -> dict[str, Any]:
    """Evaluate a checkpoint on query vs gallery; optionally re-rank and draw ranked lists."""
    import numpy as np

    from dsgl_cli.console import stage
    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.evaluation.retrieval import evaluate_model

    cfg = build_config(flags, config_file)
    device = resolve_device(cfg.device)
    model, meta = _load_for_inference(checkpoint, arch, pooling, height, width)
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    model = model.to(device)
    total = len(dataset.query) + len(dataset.gallery)
    with stage("evaluate", total=total) as bar:
        result = evaluate_model(model, dataset.query, dataset.gallery, meta["height"], meta["width"], device,
                                workers=cfg.data.workers, flip=cfg.train.flip, amp=cfg.train.amp, rerank=rerank,
                                advance=bar.advance)
    rows = [("plain", result.metrics)]
    if result.rerank_metrics is not None:
        rows.append(("re-ranked", result.rerank_metrics))
    console.print(_metrics_table(f"{cfg.data.dataset}: {meta['arch']} ({meta['pooling']}) from {checkpoint}", rows))
    out: dict[str, Any] = {**result.metrics, "dataset": cfg.data.dataset, "checkpoint": str(checkpoint),
                           "arch": meta["arch"], "pooling": meta["pooling"], "flip": cfg.train.flip,
                           "num_query": len(dataset.query), "num_gallery": len(dataset.gallery)}
    if result.rerank_metrics is not None:
        out["rerank"] = result.rerank_metrics
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
        out["ranked_lists"] = [str(f) for f in files]
    return out


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


def run_clustering(checkpoint: Optional[Path], flags: dict[str, Any], config_file: Optional[Path],
                   eps_sweep: Optional[str] = None, output: Optional[Path] = None) -> dict[str, Any]:
    """Extract train features once, build the Jaccard distance once, cluster at each eps."""
    import csv
    import time

    import numpy as np

    from dsgl_cli.console import stage
    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.data.transforms import test_transform
    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.quality import label_quality
    from dsgl_cli.features import extract_features
    from dsgl_cli.clustering.jaccard import compute_jaccard_distance
    from dsgl_cli.models import build_model

    sweep = parse_sweep(eps_sweep) if eps_sweep else None
    cfg = build_config(flags, config_file)
    device = resolve_device(cfg.device)
    if checkpoint is not None:
        model, meta = _load_for_inference(checkpoint, flags.get("arch"), flags.get("pooling_type"),
                                          flags.get("height"), flags.get("width"))
        height, width = meta["height"], meta["width"]
    else:
        model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                            cfg.model.pretrained)
        height, width = cfg.data.height, cfg.data.width
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    model = model.to(device)
    paths = [r.path for r in dataset.train]
    with stage("extract", total=len(paths)) as bar:
        feats = extract_features(model, paths, test_transform(height, width), device,
                                 workers=cfg.data.workers, amp=cfg.train.amp, advance=bar.advance)
    eps_values = sweep or [cfg.cluster.eps]
    t0 = time.perf_counter()
    with stage("jaccard distance", total=None):
        dist = compute_jaccard_distance(feats, k1=cfg.cluster.k1, k2=cfg.cluster.k2,
                                        max_distance=max(0.95, max(eps_values)))
    seconds_distance = time.perf_counter() - t0
    true_ids = np.array([r.pid for r in dataset.train])
    rows: list[dict[str, Any]] = []
    chosen = None
    for eps in eps_values:
        labels = dbscan(dist, eps=eps, min_samples=cfg.cluster.min_samples)
        quality = label_quality(labels, true_ids).to_dict()
        rows.append({"eps": eps, **quality})
        if abs(eps - cfg.cluster.eps) < 1e-9 or chosen is None:
            chosen = (eps, labels)
    table = Table(title=f"{cfg.data.dataset} train split: {len(paths):,} images, "
                        f"{len(set(true_ids.tolist()))} true identities (distance {seconds_distance:.1f}s)")
    for col in ("eps", "clusters", "outliers", "precision", "recall", "F", "ARI", "NMI"):
        table.add_column(col, justify="right")
    for r in rows:
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
    return {"dataset": cfg.data.dataset, "num_images": len(paths), "seconds_distance": seconds_distance,
            "rows": rows}


def run_export(checkpoint: Path, fmt: str, output: Optional[Path], arch: Optional[str], pooling: Optional[str],
               height: Optional[int], width: Optional[int], opset: int, device: str = "auto") -> dict[str, Any]:
    """Export and verify; print what was written and how close it is to eager."""
    from dsgl_cli.export import export_model

    report = export_model(checkpoint, fmt, output, arch=arch, pooling=pooling, height=height, width=width,
                          opset=opset, device=device)
    from dsgl_cli.console import warn

    for message in report.warnings:
        warn(message)
    info(f"wrote {report.output} ({report.format}, {report.arch}/{report.pooling}, input "
         f"{report.height}x{report.width}, {report.feature_dim}-d embeddings) and {report.metadata}")
    info(f"verified against the eager model: max |difference| = {report.max_abs_diff:.2e} (limit 1e-4)")
    return report.as_dict()
