"""``dsgl cluster``: pseudo labels of the train split and their figures, at one eps or a sweep; who is who."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from dsgl_cli.commands.common import argument, command, load_for_inference, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, counted, info, stage, warn
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, check_output_dir, write_json

if TYPE_CHECKING:
    from dsgl_cli.data.datasets import ReIDDataset

SETTINGS = ("dataset", "data_dir", "eps", "k1", "k2", "min_samples", "arch", "pooling_type", "pretrained",
            "height", "width", "workers", "amp", "device")
#: the section of a checkpoint's saved run settings that dsgl cluster defaults to
CLUSTER_SECTION = "cluster"
MAX_SWEEP = 200  # eps values one sweep may cluster (each is one DBSCAN over the whole train split)
SHOW_FOLDER = "identities"


@dataclass
class ClusteringReport:
    """One row per eps of the sweep: label-free figures, and quality against the hidden ids where labelled."""

    dataset: str
    num_images: int
    seconds_distance: float
    labelled: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels_csv: Optional[str] = None
    identity_sheets: Optional[list[str]] = None


def parse_sweep(text: str) -> list[float]:
    """'0.4:0.8:0.05' -> [0.4, 0.45, ..., 0.8] (stop included); every value must lie in (0, 1)."""
    parts = text.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise DsglError(f"--eps-sweep: expected START:STOP:STEP such as 0.4:0.8:0.05, got '{text}'",
                        exit_code=2) from None
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise DsglError(f"--eps-sweep {text}: START, STOP and STEP must be finite numbers", exit_code=2)
    if step <= 0 or stop < start:
        raise DsglError(f"--eps-sweep {text}: the sweep is empty (need STEP > 0 and STOP >= START)", exit_code=2)
    count = int(round((stop - start) / step + 1e-9)) + 1
    if count > MAX_SWEEP:
        raise DsglError(f"--eps-sweep {text} has {count:,} values, more than {MAX_SWEEP} (one clustering each); "
                        "use a larger STEP", exit_code=2)
    values = [round(start + i * step, 6) for i in range(count)]
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise DsglError(f"--eps-sweep {text}: every eps must satisfy 0 < eps < 1 (got {bad[0]})", exit_code=2)
    return values


def show_folder(checkpoint: Optional[Path], output: Optional[Path], show_dir: Optional[Path]) -> Path:
    """Where --show writes: --show-dir, else beside the --output CSV, else beside the checkpoint, else ./identities."""
    if show_dir is not None:
        return show_dir
    if output is not None:
        return output.with_name(f"{output.stem}_{SHOW_FOLDER}")
    return (checkpoint.parent if checkpoint is not None else Path(".")) / SHOW_FOLDER


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _table(report: ClusteringReport, title: str) -> Table:
    """Today's quality columns on labelled data, the label-free ones always."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)   # 11 columns fit 80
    quality = ("precision", "recall", "F", "ARI", "NMI") if report.labelled else ()
    for col in ("eps", "clusters", "outliers", *quality, "x-cam", "sim", "ARI prev"):
        table.add_column(col, justify="right")
    for r in report.rows:
        cells = [f"{r['eps']:.3g}", str(r["num_clusters"]), str(r["num_outliers"])]
        if report.labelled:
            cells += [f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f_score']:.3f}", f"{r['ari']:.3f}",
                      f"{r['nmi']:.3f}"]
        cells += [_fmt(r["multi_camera_fraction"], ".0%"), _fmt(r["mean_intra_similarity"]),
                  _fmt(r["agreement_ari"])]
        table.add_row(*cells)
    return table


def run_clustering(checkpoint: Optional[Path], cfg: RunConfig, eps_sweep: Optional[str] = None,
                   output: Optional[Path] = None, show: Optional[int] = None,
                   show_dir: Optional[Path] = None, saved: Optional[dict[str, Any]] = None) -> ClusteringReport:
    """Extract train features once, build the Jaccard distance once, cluster at each eps; ``saved``: the
    checkpoint's own clustering settings that ``cfg`` was built on (`checkpoint_settings`), to say so."""
    import numpy as np

    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.jaccard import compute_jaccard_distance
    from dsgl_cli.clustering.label_free import label_free_figures
    from dsgl_cli.clustering.quality import label_quality
    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.data.transforms import test_transform
    from dsgl_cli.features import extract_features
    from dsgl_cli.models.reid import build_model
    from dsgl_cli.runtime import resolve_device

    sweep = parse_sweep(eps_sweep) if eps_sweep else None
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)   # the user's data first: its errors are cheapest
    _warn_skipped(dataset)
    info(settings_line(cfg, saved))
    device = resolve_device(cfg.device)
    if checkpoint is not None:
        model, meta = load_for_inference(checkpoint, cfg)
        height, width = meta.height, meta.width
    else:
        model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                            cfg.model.pretrained)
        height, width = cfg.data.height, cfg.data.width
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
    labelled = dataset.labelled("train")
    true_ids = np.array([r.pid for r in dataset.train])
    cams = np.array([r.camid for r in dataset.train])
    host_feats = feats.float().cpu().numpy()
    report = ClusteringReport(cfg.data.dataset, len(paths), seconds_distance, labelled)
    chosen = None
    previous = None
    one_camera = len(set(cams.tolist())) == 1
    for eps in eps_values:
        labels = dbscan(distance, eps=eps, min_samples=cfg.cluster.min_samples)
        row: dict[str, Any] = {"eps": eps, **label_free_figures(labels, cams, host_feats, previous).to_dict()}
        if one_camera:
            row["multi_camera_fraction"] = None
        if labelled:
            row.update(label_quality(labels, true_ids).to_dict())
        report.rows.append(row)
        previous = labels
        if abs(eps - cfg.cluster.eps) < 1e-9 or chosen is None:
            chosen = (eps, labels)
    who = (f"{len(set(true_ids.tolist()))} true identities" if labelled else
           f"unlabelled, {counted(len(set(cams.tolist())), 'camera')}")
    console.print(_table(report, f"{cfg.data.dataset} train split: {len(paths):,} images, {who} "
                                 f"(distance {seconds_distance:.1f}s)"))
    info("x-cam: share of clusters spanning more than one camera; sim: mean cosine similarity within clusters; "
         "ARI prev: agreement with the previous eps on the images clustered at both (NMI too in --json)")
    if one_camera:
        info("one camera: no x-cam figure (every cluster lies within the one camera)")
    if chosen is not None and output is not None:
        write_labels(output, dataset, chosen[1])
        report.labels_csv = str(output)
        info(f"pseudo labels at eps {chosen[0]} written to {output}")
    if chosen is not None and show is not None:
        from dsgl_cli.evaluation.identity_sheets import save_identity_sheets

        folder = show_folder(checkpoint, output, show_dir)
        files = save_identity_sheets(paths, chosen[1], [dataset.camera_caption(int(c)) for c in cams], folder,
                                     num_identities=show)
        report.identity_sheets = [str(f) for f in files]
        info(f"{len(files) - 1} pseudo identities at eps {chosen[0]} drawn in {folder} (open {files[-1]})")
    return report


def checkpoint_settings(checkpoint: Path) -> dict[str, Any]:
    """The clustering settings the checkpoint's run trained with ({} where it records none: the authors' format,
    a bare state dict), limited to what this command takes."""
    from dsgl_cli.models.checkpoint import load_checkpoint

    saved = ((load_checkpoint(checkpoint).get("extra") or {}).get("config") or {}).get(CLUSTER_SECTION) or {}
    return {k: v for k, v in saved.items() if k in SETTINGS}


def settings_line(cfg: RunConfig, saved: Optional[dict[str, Any]]) -> str:
    """'clustering with eps 0.5, k1 20, k2 6, min-samples 4 (eps from the command line, the rest from the
    checkpoint's run)': which values, and where each came from."""
    c = cfg.cluster
    values = {"eps": c.eps, "k1": c.k1, "k2": c.k2, "min_samples": c.min_samples}
    sources: dict[str, list[str]] = {}
    for key in values:
        where = ("the command line" if key in cfg.explicit else "the checkpoint's run" if saved and key in saved
                 else "the defaults")
        sources.setdefault(where, []).append(key.replace("_", "-"))
    said = "; ".join(f"{', '.join(keys)} from {where}" for where, keys in sources.items())
    note = "" if saved or saved is None else "; the checkpoint records no run settings"
    return ("clustering with " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in values.items())
            + f" ({said}{note})")


def write_labels(output: Path, dataset: "ReIDDataset", labels: Any) -> None:
    """``path,pseudo_label,camera`` per train image, in data set order; the camera by its name."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "pseudo_label", "camera"])
        for rec, label in zip(dataset.train, labels):
            writer.writerow([rec.path, int(label), dataset.camera_name(rec.camid)])


def _warn_skipped(dataset: "ReIDDataset") -> None:
    skipped = dataset.skipped
    if skipped:
        warn(escape(f"{len(skipped)} file(s) skipped, not images (e.g. {skipped[0][0]}); dsgl prepare lists them all"))


def cluster(**kwargs: Any) -> None:
    """Cluster the train split and report its figures; a sweep helps choose --eps for new data.

    Works on unlabelled data (-d folder with camera folders or a manifest): the table then shows the
    label-free figures only. --output writes path,pseudo_label,camera (the camera's name); --show N draws
    the N largest pseudo identities, one picture each grouped by camera, plus index.html, into --show-dir
    (default: beside the --output CSV as <name>_identities/, else <checkpoint folder>/identities/, else
    ./identities/).

    Example: dsgl cluster runs/demo/model_best.pth -d folder --data-dir my_cameras --output labels.csv --show 20
    """
    flags, own = split(kwargs, SETTINGS)
    if own["show"] is not None and own["show"] < 1:
        raise DsglError(f"--show: must be a positive number of identities, got {own['show']}", exit_code=2)
    for flag, key in (("--json", "json_out"), ("--output", "output")):
        check_output(own[key], flag, [own["checkpoint"]])
    if own["show"] is not None:
        check_output_dir(show_folder(own["checkpoint"], own["output"], own["show_dir"]), "--show-dir")
    saved = checkpoint_settings(own["checkpoint"]) if own["checkpoint"] is not None else None
    report = run_clustering(own["checkpoint"], resolve(flags, own["config"], saved=saved), eps_sweep=own["eps_sweep"],
                            output=own["output"], show=own["show"], show_dir=own["show_dir"], saved=saved)
    if own["json_out"] is not None:
        write_json(own["json_out"], report)


def register(app: typer.Typer) -> None:
    command(app, "cluster", cluster, SETTINGS, own=[
        argument("checkpoint", Optional[Path], "Checkpoint to extract features with; omit to use --pretrained weights.",
                 default=None),
        option("eps_sweep", Optional[str], "--eps-sweep",
               help=f"START:STOP:STEP, e.g. 0.4:0.8:0.05 (stop included, at most {MAX_SWEEP} values)."),
        option("output", Optional[Path], "--output", help="Write path,pseudo_label,camera CSV (at --eps)."),
        option("show", Optional[int], "--show",
               help="Draw the N largest pseudo identities (at --eps), one picture each, plus index.html."),
        option("show_dir", Optional[Path], "--show-dir",
               help="Where --show writes (default: <output>_identities/ beside --output, else "
                    "<checkpoint folder>/identities/, else ./identities/)."),
    ])
