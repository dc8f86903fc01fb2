"""``dsgl prepare``: verify a data set layout (or write the demo set) and print its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import typer
from rich.table import Table

from dsgl_cli.commands.common import command, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, stage, warn
from dsgl_cli.data.datasets import SPLIT_FOLDERS, MissingSplitError, ReIDDataset, get_layout, load_dataset
from dsgl_cli.data.images import find_unreadable
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, write_json

SETTINGS = ("dataset", "data_dir", "workers")
MAX_NAMED = 5


@dataclass
class SplitRow:
    """What one split folder holds, beside the release's figures where known."""

    folder: str
    images: int
    ids: int
    cams: int
    junk: int
    misnamed: int
    misnamed_examples: list[str]
    distractors: Optional[int] = None
    release: Optional[dict[str, int]] = None


@dataclass
class DatasetReport:
    """`dsgl prepare`'s findings: per split counts, warnings, unreadable images."""

    dataset: str
    root: str
    splits: dict[str, SplitRow] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    error: Optional[str] = None


def dataset_report(ds: ReIDDataset) -> DatasetReport:
    """Per-split counts next to the release figures, plus a warning for each difference."""
    layout = get_layout(ds.name)
    report = DatasetReport(dataset=ds.name, root=str(ds.root))
    for split_name, rep in ds.splits.items():
        row = SplitRow(folder=SPLIT_FOLDERS[split_name], images=len(rep.records), ids=rep.num_ids, cams=rep.num_cams,
                       junk=rep.junk, misnamed=len(rep.misnamed), misnamed_examples=rep.misnamed[:MAX_NAMED])
        if split_name == "gallery":
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
        report.splits[split_name] = row
    return report


def render_report(report: DatasetReport) -> None:
    """One table: per split, what the folder holds beside the release figures."""
    table = Table(title=f"{report.dataset}  ({report.root})")
    for col in ("split", "images", "identities", "cameras", "junk (-1)", "misnamed", "release images / ids / cams"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split_name, row in report.splits.items():
        rel = row.release
        rel_text = f"{rel['images']:,} / {rel['ids']:,} / {rel['cams']}" if rel else "-"
        ok = rel is None or (rel["images"], rel["ids"], rel["cams"]) == (row.images, row.ids, row.cams)
        table.add_row(split_name, f"{row.images:,}", f"{row.ids:,}", str(row.cams), str(row.junk), str(row.misnamed),
                      rel_text, style="" if ok else "yellow")
    console.print(table)
    for message in report.warnings:
        warn(message)


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
            bad = find_unreadable(paths, workers=cfg.data.workers, advance=bar.advance)
        report.unreadable = [{"path": p, "reason": why} for p, why in bad]
        for path, why in bad:
            console.print(f"[red]unreadable[/red] {path}  ({why})")
        if not bad:
            console.print(f"All {len(paths):,} images decode.")
    empty = [s for s, row in report.splits.items() if row.images == 0]
    if empty:
        report.error = f"empty split(s): {', '.join(empty)}"
    return report


def prepare(**kwargs: Any) -> None:
    """Verify a data set layout and print its statistics; [bold]-d demo[/bold] writes the built-in demo set.

    Example: dsgl prepare -d market1501 --data-dir data --check-images
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
    command(app, "prepare", prepare, SETTINGS, own=[
        option("check_images", bool, "--check-images", default=False,
               help="Decode every image and list unreadable files."),
    ])

