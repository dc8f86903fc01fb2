"""``dsgl prepare``: verify a data set layout (or write the demo set) and print its statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.table import Table

from dsgl_cli.config import build_config
from dsgl_cli.console import console, stage, warn
from dsgl_cli.data.datasets import (
    SPLIT_FOLDERS,
    MissingSplitError,
    ReIDDataset,
    get_layout,
    load_dataset,
)
from dsgl_cli.data.images import find_unreadable
from dsgl_cli.errors import DsglError
from dsgl_cli.options import ConfigFile, DataDir, Dataset, JsonOut, Workers

MAX_NAMED = 5


def dataset_report(ds: ReIDDataset) -> dict[str, Any]:
    """Per-split counts next to the release figures, plus a warning for each difference."""
    layout = get_layout(ds.name)
    report: dict[str, Any] = {"dataset": ds.name, "root": str(ds.root), "splits": {}, "warnings": []}
    for split, rep in ds.splits.items():
        row: dict[str, Any] = {
            "folder": SPLIT_FOLDERS[split], "images": len(rep.records), "ids": rep.num_ids,
            "cams": rep.num_cams, "junk": rep.junk, "misnamed": len(rep.misnamed),
            "misnamed_examples": rep.misnamed[:MAX_NAMED],
        }
        if split == "gallery":
            row["distractors"] = sum(1 for r in rep.records if r.pid == 0)
        canon = (layout.canonical or {}).get(split)
        if canon is not None:
            row["release"] = {"images": canon.images, "ids": canon.ids, "cams": canon.cams}
            for key, have, want in (("images", row["images"], canon.images), ("identities", row["ids"], canon.ids),
                                    ("cameras", row["cams"], canon.cams)):
                if have != want:
                    report["warnings"].append(f"{split}: {have} {key}, the release has {want}")
        if rep.misnamed:
            names = ", ".join(rep.misnamed[:MAX_NAMED]) + (" ..." if len(rep.misnamed) > MAX_NAMED else "")
            report["warnings"].append(
                f"{split}: {len(rep.misnamed)} file(s) do not fit the naming scheme and are ignored: {names}"
            )
        report["splits"][split] = row
    return report


def render_report(report: dict[str, Any]) -> None:
    """One table: per split, what the folder holds beside the release figures."""
    table = Table(title=f"{report['dataset']}  ({report['root']})")
    for col in ("split", "images", "identities", "cameras", "junk (-1)", "misnamed", "release images / ids / cams"):
        table.add_column(col, justify="left" if col in ("split",) else "right")
    for split, row in report["splits"].items():
        rel = row.get("release")
        rel_text = f"{rel['images']:,} / {rel['ids']:,} / {rel['cams']}" if rel else "-"
        ok = rel is None or (rel["images"], rel["ids"], rel["cams"]) == (row["images"], row["ids"], row["cams"])
        style = "" if ok else "yellow"
        table.add_row(split, f"{row['images']:,}", f"{row['ids']:,}", str(row["cams"]), str(row["junk"]),
                      str(row["misnamed"]), rel_text, style=style)
    console.print(table)
    for message in report["warnings"]:
        warn(message)


def run_prepare(name: str, data_dir: Path, check_images: bool, workers: int) -> dict[str, Any]:
    """Load (or generate) the data set, report it, and optionally decode every image."""
    try:
        ds = load_dataset(name, data_dir, require_nonempty=False)
    except MissingSplitError as exc:
        console.print(f"Expected layout:\n{exc.tree}")
        raise
    report = dataset_report(ds)
    render_report(report)
    if check_images:
        paths = [r.path for rep in ds.splits.values() for r in rep.records]
        with stage("decode images", total=len(paths)) as bar:
            bad = find_unreadable(paths, workers=workers, advance=bar.advance)
        report["unreadable"] = [{"path": p, "reason": why} for p, why in bad]
        for path, why in bad:
            console.print(f"[red]unreadable[/red] {path}  ({why})")
        if not bad:
            console.print(f"All {len(paths):,} images decode.")
    empty = [s for s, row in report["splits"].items() if row["images"] == 0]
    if empty:
        report["error"] = f"empty split(s): {', '.join(empty)}"
    return report


def register(app: typer.Typer, handle_errors: Callable) -> None:
    @app.command("prepare")
    @handle_errors
    def prepare(
        dataset: Dataset = None,
        data_dir: DataDir = None,
        check_images: Annotated[bool, typer.Option("--check-images", help="Decode every image and list unreadable files.")] = False,
        workers: Workers = None,
        config: ConfigFile = None,
        json_out: JsonOut = None,
    ) -> None:
        """Verify a data set layout and print its statistics; [bold]-d demo[/bold] writes the built-in demo set.

        Example: dsgl prepare -d market1501 --data-dir data --check-images
        """
        cfg = build_config({"dataset": dataset, "data_dir": data_dir, "workers": workers}, config)
        report = run_prepare(cfg.data.dataset, cfg.data.data_dir, check_images, cfg.data.workers)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2))
        if report.get("unreadable"):
            raise DsglError(f"{len(report['unreadable'])} unreadable image(s); remove or replace them")
        if report.get("error"):
            raise DsglError(f"{report['error']} under {report['root']}")
