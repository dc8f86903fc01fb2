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
from dsgl_cli.config import EPS_AUTO, RunConfig
from dsgl_cli.console import console, counted, info, stage, warn
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, check_output_dir, write_json

if TYPE_CHECKING:
    from dsgl_cli.data.datasets import ReIDDataset

SETTINGS: tuple[str, ...] = ("dataset", "data_dir", "eps", "k1", "k2", "min_samples", "arch", "pooling_type",
                             "pretrained", "height", "width", "workers", "amp", "device")
#: the camera-aware distance's settings (docs/ca-jaccard.md), taken by cluster as by train
SETTINGS += ("jaccard", "k1_intra", "k1_inter", "k2_intra", "k2_inter")
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
    auto_eps: Optional[float] = None   # the eps --eps auto's rule picks on these features
    auto_row: Optional[dict[str, Any]] = None   # the figures at that eps (a row like rows')
    jaccard: Optional[str] = None


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
    rows = report.rows + ([report.auto_row] if report.auto_row is not None else [])
    for r in rows:
        if r is report.auto_row and report.rows:
            table.rows[-1].end_section = True
        auto = r is report.auto_row
        cells = [f"{'auto ' if auto else ''}{r['eps']:.3g}", str(r["num_clusters"]), str(r["num_outliers"])]
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
    labelled = dataset.labelled("train")
    true_ids = np.array([r.pid for r in dataset.train])
    cams = np.array([r.camid for r in dataset.train])
    report = ClusteringReport(cfg.data.dataset, len(paths), 0.0, labelled)
    one_camera = len(set(cams.tolist())) == 1
    chosen = cluster_and_report(feats, cams, true_ids if labelled else None, cfg, sweep, report)
    seconds_distance = report.seconds_distance
    who = (f"{len(set(true_ids.tolist()))} true identities" if labelled else
           f"unlabelled, {counted(len(set(cams.tolist())), 'camera')}")
    console.print(_table(report, f"{cfg.data.dataset} train split: {len(paths):,} images, {who} "
                                 f"(distance {seconds_distance:.1f}s)"))
    info("x-cam: share of clusters spanning more than one camera; sim: mean cosine similarity within clusters; "
         "ARI prev: agreement with the previous eps on the images clustered at both (NMI too in --json)")
    if one_camera:
        info("one camera: no x-cam figure (every cluster lies within the one camera)")
    _note_auto(report)
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


def cluster_and_report(feats: Any, cams: Optional[Any], true_ids: Optional[Any], cfg: RunConfig,
                       sweep: Optional[list[float]], report: ClusteringReport) -> Optional[tuple[float, Any]]:
    """Build the --jaccard distance once, cluster at each eps (and where --eps auto's rule picks), fill
    the report's rows; the (eps, labels) at --eps for --output and --show.

    The rule's pick is computed whenever --eps is auto or a sweep is asked for (report.auto_row, printed
    last), so a labelled sweep shows how it compares with the best eps.
    """
    import numpy as np

    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.distance import clustering_distance, distance_settings
    from dsgl_cli.clustering.eps_auto import choose_eps
    from dsgl_cli.clustering.label_free import label_free_figures
    from dsgl_cli.clustering.quality import label_quality

    auto = cfg.cluster.eps == EPS_AUTO
    fixed = [] if auto else [float(cfg.cluster.eps)]
    eps_values = sweep or fixed
    t0 = time.perf_counter()
    with stage(f"{cfg.cluster.jaccard} jaccard distance", total=None):
        distance = clustering_distance(feats, cameras=cams, epoch=None, max_distance=max([0.95, *eps_values]),
                                       **distance_settings(cfg.cluster))
    report.seconds_distance = time.perf_counter() - t0
    host_feats = feats.float().cpu().numpy() if hasattr(feats, "cpu") else np.asarray(feats, dtype=np.float32)
    figure_cams = cams if cams is not None else np.zeros(len(host_feats), dtype=np.int64)
    one_camera = len(set(np.asarray(figure_cams).tolist())) == 1

    def row_at(eps: float, labels: Any, previous: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"eps": eps, **label_free_figures(labels, figure_cams, host_feats, previous).to_dict()}
        if cams is None or one_camera:   # with one camera the share means nothing
            row["multi_camera_fraction"] = None
        if true_ids is not None:
            row.update(label_quality(labels, true_ids).to_dict())
        return row

    labels_at: dict[float, Any] = {}
    previous = None
    for eps in eps_values:
        labels_at[eps] = dbscan(distance, eps=eps, min_samples=cfg.cluster.min_samples)
        report.rows.append(row_at(eps, labels_at[eps], previous))
        previous = labels_at[eps]
    picked = None
    report.jaccard = cfg.cluster.jaccard
    if auto or sweep:
        try:
            choice = choose_eps(distance, lambda e: dbscan(distance, eps=e, min_samples=cfg.cluster.min_samples))
        except DsglError as exc:
            if auto:
                raise
            info(f"no auto row: {exc}")   # a plain sweep still shows its rows
        else:
            picked = choice.eps
            report.auto_eps = picked
            report.auto_row = row_at(picked, choice.labels, None)
            labels_at.setdefault(picked, choice.labels)
    target = picked if auto else next((e for e in eps_values if abs(e - float(cfg.cluster.eps)) < 1e-9),
                                      eps_values[0] if eps_values else None)
    return (target, labels_at[target]) if target is not None else None


def _note_auto(report: ClusteringReport) -> None:
    if report.auto_eps is not None:
        info(f"auto: eps {report.auto_eps:g}, the one --eps auto picks (largest silhouette on the distance, "
             "outliers counted 0; docs/eps-auto.md)")


def run_embeddings_clustering(path: Path, cfg: RunConfig, eps_sweep: Optional[str] = None,
                              output: Optional[Path] = None) -> ClusteringReport:
    """`dsgl cluster --embeddings`: the same distance, sweep and CSV on given features, no model or data set."""
    from dsgl_cli.evaluation.embeddings import read_embeddings

    sweep = parse_sweep(eps_sweep) if eps_sweep else None
    emb = read_embeddings(path, "--embeddings", need_cameras=cfg.cluster.jaccard == "camera-aware")
    n = emb.features.shape[0]
    report = ClusteringReport(str(path), n, 0.0, labelled=emb.ids is not None, jaccard=cfg.cluster.jaccard)
    chosen = cluster_and_report(emb.features, emb.cameras, emb.ids, cfg, sweep, report)
    who = f"{len(set(emb.ids.tolist()))} true identities" if emb.ids is not None else "no identities"
    cams = f", {len(set(emb.cameras.tolist()))} cameras" if emb.cameras is not None else ""
    console.print(_table(report, f"{escape(path.name)}: {n:,} embeddings, {who}{cams}, {cfg.cluster.jaccard} "
                                 f"(distance {report.seconds_distance:.1f}s)"))
    _note_auto(report)
    if chosen is not None and output is not None:
        names = emb.paths if emb.paths is not None else [str(i) for i in range(n)]
        cameras = [str(c) for c in emb.cameras] if emb.cameras is not None else [""] * n
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "pseudo_label", "camera"])
            writer.writerows(zip(names, (int(v) for v in chosen[1]), cameras))
        report.labels_csv = str(output)
        info(f"pseudo labels at eps {chosen[0]} written to {output}")
    return report


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

    --embeddings FILE.npz clusters features someone already has (dsgl embed writes them), with their
    cameras: dsgl cluster --embeddings gallery.npz --jaccard camera-aware --eps auto --output labels.csv
    """
    flags, own = split(kwargs, SETTINGS)
    if own["embeddings"] is not None:
        for given, flag in ((own["checkpoint"], "a checkpoint"), (own["show"], "--show")):
            if given is not None:
                raise DsglError(f"--embeddings clusters the given features: {flag} cannot be used with it", exit_code=2)
        for flag, key in (("--json", "json_out"), ("--output", "output")):
            check_output(own[key], flag, [own["embeddings"]])
        report = run_embeddings_clustering(own["embeddings"], resolve(flags, own["config"]),
                                           eps_sweep=own["eps_sweep"], output=own["output"])
        if own["json_out"] is not None:
            write_json(own["json_out"], report)
        return
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
        option("embeddings", Optional[Path], "--embeddings",
               help="Cluster the features of this .npz (dsgl embed's, or any with features and cameras/cams "
                    "arrays) instead of extracting them: no checkpoint or data set needed."),
        option("eps_sweep", Optional[str], "--eps-sweep",
               help=f"START:STOP:STEP, e.g. 0.4:0.8:0.05 (stop included, at most {MAX_SWEEP} values)."),
        option("output", Optional[Path], "--output", help="Write path,pseudo_label,camera CSV (at --eps)."),
        option("show", Optional[int], "--show",
               help="Draw the N largest pseudo identities (at --eps), one picture each, plus index.html."),
        option("show_dir", Optional[Path], "--show-dir",
               help="Where --show writes (default: <output>_identities/ beside --output, else "
                    "<checkpoint folder>/identities/, else ./identities/)."),
    ])
