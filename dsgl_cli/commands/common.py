"""What every command shares: the --config and --json options, config resolution, model loading, tables."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, Sequence

import typer
from rich.table import Table

from dsgl_cli.config import ALL_SECTIONS, RunConfig, build_config
from dsgl_cli.console import info, warn
from dsgl_cli.settings import options, with_signature

if TYPE_CHECKING:
    from dsgl_cli.evaluation.metrics import RankResult
    from dsgl_cli.models.checkpoint import CheckpointInfo
    from dsgl_cli.models.reid import ReIDModel

#: the two options that are not settings but mean the same in every command
CONFIG = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Optional[Path], typer.Option(
        "--config", help="YAML, TOML or JSON file of settings (flag names as keys, flat or in data/model/"
                         "cluster/train/eval sections); explicit flags override it.", show_default=False)])
JSON = inspect.Parameter(
    "json_out", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the results to this JSON file.", show_default=False)])


def argument(name: str, kind: Any, help: str, default: Any = ...) -> inspect.Parameter:
    """A positional command-line argument."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             default=inspect.Parameter.empty if default is ... else default,
                             annotation=Annotated[kind, typer.Argument(help=help, show_default=False)])


def option(name: str, kind: Any, *flags: str, help: str, default: Any = None) -> inspect.Parameter:
    """A command's own option (one that is not a run setting), declared once where it is used."""
    flag = typer.Option(*flags, help=help, show_default=default is not None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, flag])


def command(app: typer.Typer, name: str, func: Callable[..., Any], settings: Sequence[str],
            own: Sequence[inspect.Parameter] = (), json: bool = True, loads_torch: bool = True) -> None:
    """Register ``func(**kwargs)`` as ``dsgl NAME`` with its own options, the settings it takes and --config."""
    from dsgl_cli.cli import handle_errors

    params = [*own, *options(ALL_SECTIONS, settings), CONFIG, *((JSON,) if json else ())]
    wrapped = with_signature(handle_errors(func, loads_torch=loads_torch), params)
    app.command(name, help=func.__doc__)(wrapped)


def split(kwargs: dict[str, Any], settings: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the settings given on the command line, the command's own arguments)."""
    return ({k: v for k, v in kwargs.items() if k in settings},
            {k: v for k, v in kwargs.items() if k not in settings})


def resolve(flags: dict[str, Any], config_file: Optional[Path], presets: Optional[dict[str, Any]] = None,
            preset: Optional[str] = None, saved: Optional[dict[str, Any]] = None) -> RunConfig:
    """The run configuration: defaults < preset < a checkpoint's saved settings < --config file < flags."""
    return build_config(flags, config_file, presets=presets, preset=preset, saved=saved)


def load_for_inference(checkpoint: Path, cfg: RunConfig) -> tuple["ReIDModel", "CheckpointInfo"]:
    """A checkpoint's eval-mode model: architecture, pooling and input size the user gave (by flag or
    --config) are passed on, the file's own description wins where they contradict it (with a warning)."""
    from dsgl_cli.models.checkpoint import load_model

    given = cfg.explicit
    model, meta = load_model(
        checkpoint,
        arch=cfg.model.arch if "arch" in given else None,
        pooling=cfg.model.pooling_type if "pooling_type" in given else None,
        height=cfg.data.height if "height" in given else None,
        width=cfg.data.width if "width" in given else None,
    )
    for message in meta.warnings:
        warn(message)
    for message in meta.notes:
        info(f"note: {message}")
    return model, meta


def metrics_table(title: str, rows: Sequence[tuple[str, "RankResult"]]) -> Table:
    """mAP, Rank-1/5/10 and mINP, one row per ranking."""
    table = Table(title=title)
    for col in ("", "mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"):
        table.add_column(col, justify="right")
    for name, m in rows:
        table.add_row(name, f"{m.mAP:.1%}", f"{m.rank1:.1%}", f"{m.rank5:.1%}", f"{m.rank10:.1%}", f"{m.mINP:.1%}")
    return table
