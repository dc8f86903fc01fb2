"""``dsgl prepare``: verify a data set layout (or write the demo set) and print its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from dsgl_cli.commands.common import command, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, counted, info, stage, warn
from dsgl_cli.data.datasets import (
    IMAGE_SUFFIXES,
    MARKET,
    SPLIT_FOLDERS,
    MissingSplitError,
    ReIDDataset,
    get_layout,
    load_dataset,
)
from dsgl_cli.data.images import survey_images
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, write_json

SETTINGS = ("dataset", "data_dir", "workers")
MAX_NAMED = 5
MAX_SIZES = 5  # the most common image sizes printed
MAX_SKIPPED = 20  # skipped files named one per line (all of them are in --json)


@dataclass
class SplitRow:
    """What one split holds, beside the release's figures where known."""

    folder: str
    images: int
    ids: Optional[int]                  # None: the split is unlabelled
    cams: int
    junk: int
    misnamed: int
    misnamed_examples: list[str]
    labelled: bool = True
    distractors: Optional[int] = None
    release: Optional[dict[str, int]] = None


@dataclass
class DatasetReport:
    """`dsgl prepare`'s findings: per split and per camera counts, warnings, and what decoding found."""

    dataset: str
    root: str
    layout: str = MARKET
    splits: dict[str, SplitRow] = field(default_factory=dict)
    cameras: dict[str, dict[str, int]] = field(default_factory=dict)   # camera name -> split -> images
    skipped: list[dict[str, str]] = field(default_factory=list)        # files not read as images
    warnings: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)                # "WxH" -> images (--check-images)
    stored: dict[str, int] = field(default_factory=dict)               # "JPEG RGB", "PNG L" -> images (--check-images)
    duplicates: list[list[str]] = field(default_factory=list)          # byte-identical files (--check-images)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    error: Optional[str] = None


def dataset_report(ds: ReIDDataset) -> DatasetReport:
    """Per-split and per-camera counts next to the release figures, plus a warning for each difference."""
    layout = get_layout(ds.name)
    report = DatasetReport(dataset=ds.name, root=str(ds.root), layout=ds.layout)
    for split_name, rep in ds.splits.items():
        row = SplitRow(folder=SPLIT_FOLDERS[split_name] if ds.layout == MARKET else split_name,
                       images=len(rep.records), ids=rep.num_ids if rep.labelled else None, cams=rep.num_cams,
                       junk=rep.junk, misnamed=len(rep.misnamed), misnamed_examples=rep.misnamed[:MAX_NAMED],
                       labelled=rep.labelled)
        if split_name == "gallery" and rep.labelled:
            row.distractors = sum(1 for r in rep.records if r.pid == 0)
        canon = (layout.canonical or {}).get(split_name)
        if canon is not None:
            row.release = {"images": canon.images, "ids": canon.ids, "cams": canon.cams}
            for key, have, want in (("images", row.images, canon.images), ("identities", row.ids, canon.ids),
                                    ("cameras", row.cams, canon.cams)):
                if have != want:
                    report.warnings.append(f"{split_name}: {have} {key}, the release has {want}")
        if rep.misnamed:
            names = ", ".join(rep.misnamed[:MAX_NAMED]) + (" ..." if len(rep.misnamed) > MAX_NAMED else "")
            report.warnings.append(
                f"{split_name}: {len(rep.misnamed)} file(s) do not fit the naming scheme and are ignored: {names}")
        for rec in rep.records:
            per_split = report.cameras.setdefault(ds.camera_name(rec.camid), {})
            per_split[split_name] = per_split.get(split_name, 0) + 1
        report.splits[split_name] = row
    order = {name: i for i, name in enumerate(ds.cameras)}
    report.cameras = dict(sorted(report.cameras.items(), key=lambda kv: order.get(kv[0], len(order))))
    report.skipped = [{"path": p, "reason": why} for p, why in ds.skipped]
    if report.skipped:
        more = " and in --json" if len(report.skipped) > MAX_SKIPPED else ""
        report.warnings.append(f"{len(report.skipped)} file(s) skipped, not read as images (dsgl reads "
                               f"{', '.join(IMAGE_SUFFIXES)}): listed below{more}")
    return report


def render_report(report: DatasetReport) -> None:
    """Per split, what it holds beside the release figures; per camera, how many images; then the warnings."""
    table = Table(title=f"{report.dataset}: {report.layout}  ({escape(report.root)})")
    market = report.layout == MARKET        # junk, misnamed files and release figures exist for file names only
    extra = ("junk (-1)", "misnamed", "release images / ids / cams") if market else ("junk (-1)",)
    for col in ("split", "images", "identities", "cameras", *extra):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split_name, row in report.splits.items():
        rel = row.release
        rel_text = f"{rel['images']:,} / {rel['ids']:,} / {rel['cams']}" if rel else "-"
        ok = rel is None or (rel["images"], rel["ids"], rel["cams"]) == (row.images, row.ids, row.cams)
        ids = f"{row.ids:,}" if row.ids is not None else "unlabelled"
        cells = [str(row.junk), str(row.misnamed), rel_text] if market else [str(row.junk)]
        table.add_row(split_name, f"{row.images:,}", ids, str(row.cams), *cells, style="" if ok else "yellow")
    console.print(table)
    splits = list(report.splits)
    cams = Table(title=counted(len(report.cameras), "camera"))
    for col in ("camera", *splits, "all"):
        cams.add_column(col, justify="left" if col == "camera" else "right")
    for name, counts in report.cameras.items():
        cams.add_row(escape(name), *(f"{counts.get(s, 0):,}" for s in splits), f"{sum(counts.values()):,}")
    console.print(cams)
    labelled = [s for s, row in report.splits.items() if row.labelled]
    info(f"labelled splits (person ids known): {', '.join(labelled) if labelled else 'none'}"
         + ("" if {"query", "gallery"} <= set(labelled) else
            "; without labelled query and gallery there is no mAP (cluster, embed and search need none)"))
    for message in report.warnings:
        warn(message)
    for item in report.skipped[:MAX_SKIPPED]:
        console.print(f"[yellow]skipped[/yellow] {escape(item['path'])}  ({item['reason']})", soft_wrap=True)
    if len(report.skipped) > MAX_SKIPPED:
        console.print(f"... and {len(report.skipped) - MAX_SKIPPED} more skipped files", soft_wrap=True)


def render_survey(report: DatasetReport, total: int) -> None:
    """Sizes and modes in one line each, then one line per duplicate group and per unreadable file."""
    common = sorted(report.sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    if common:
        by_area = sorted(report.sizes, key=lambda s: (int(s.split("x")[0]) * int(s.split("x")[1]), s))
        shown = ", ".join(f"{size} ({n:,})" for size, n in common[:MAX_SIZES])
        more = f" and {len(common) - MAX_SIZES} more" if len(common) > MAX_SIZES else ""
        info(f"image sizes (width x height): {shown}{more}; smallest {by_area[0]}, largest {by_area[-1]}")
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(report.stored.items(), key=lambda kv: (-kv[1], kv[0])))
        info(f"stored as: {kinds} (every image is read as RGB)")
    for group in report.duplicates:
        warn(escape(f"{len(group)} identical files: {', '.join(group)}"))
    for item in report.unreadable:
        console.print(f"[red]unreadable[/red] {escape(item['path'])}  ({escape(item['reason'])})", soft_wrap=True)
    if not report.unreadable:
        console.print(f"All {counted(total, 'image')} decode." if total != 1 else "The 1 image decodes.")


def run_prepare(cfg: RunConfig, check_images: bool) -> DatasetReport:
    """Load (or generate) the data set, report it, and optionally decode every image."""
    try:
        ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, require_nonempty=False)
    except MissingSplitError as exc:
        console.print(f"Expected layout:\n{exc.tree}")
        raise
    report = dataset_report(ds)
    render_report(report)
    if check_images:
        paths = [r.path for rep in ds.splits.values() for r in rep.records]
        with stage("decode images", total=len(paths)) as bar:
            survey = survey_images(paths, workers=cfg.data.workers, advance=bar.advance)
        report.sizes, report.stored = dict(survey.sizes), dict(survey.kinds)
        report.duplicates = survey.duplicates
        report.unreadable = [{"path": p, "reason": why} for p, why in survey.unreadable]
        render_survey(report, len(paths))
    else:
        info("--check-images also decodes every image: sizes, exact duplicates, unreadable files")
    empty = [s for s, row in report.splits.items() if row.images == 0]
    if empty:
        report.error = f"empty split(s): {', '.join(empty)}"
    return report


def prepare(**kwargs: Any) -> None:
    """Verify a data set layout and print its statistics; [bold]-d demo[/bold] writes the built-in demo set,
    [bold]-d demo-market[/bold] the same generator at Market-1501's size (32,000 images, in parallel).

    [bold]-d folder --data-dir DIR[/bold] reads your own data as it is, the first of: DIR naming a .csv
    manifest, a manifest.csv inside DIR (header path,camera[,person][,split]; paths relative to the
    manifest; person an integer id or empty; split train, query or gallery, empty = train), the
    Market-named folders bounding_box_train (+ query and bounding_box_test, both or neither), or one
    sub-folder per camera (the folder name is the camera; any file names, any depth; no labels).

    Example: dsgl prepare -d folder --data-dir my_cameras --check-images
    """
    flags, own = split(kwargs, SETTINGS)
    check_output(own["json_out"], "--json")
    report = run_prepare(resolve(flags, own["config"]), own["check_images"])
    if own["json_out"] is not None:
        write_json(own["json_out"], report)
    if report.unreadable:
        raise DsglError(f"{len(report.unreadable)} unreadable image(s); remove or replace them")
    if report.error:
        raise DsglError(f"{report.error} under {report.root}")


def register(app: typer.Typer) -> None:
    command(app, "prepare", prepare, SETTINGS, loads_torch=False, own=[
        option("check_images", bool, "--check-images", default=False,
               help="Decode every image: list unreadable files, image sizes and modes, exact duplicate files."),
    ])
