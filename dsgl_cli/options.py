"""Reusable Annotated option types, so every command spells shared flags the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Dataset = Annotated[
    Optional[str],
    typer.Option("-d", "--dataset", help="market1501 | msmt17 | dukemtmcreid | folder | demo (generated on first use)."),
]
DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Folder holding the data sets (default: $DSGL_DATA_DIR or ./data).",
                 show_default=False),
]
Device = Annotated[
    Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default: auto).", show_default=False)
]
ConfigFile = Annotated[
    Optional[Path],
    typer.Option("--config", help="YAML, TOML or JSON file of settings; explicit flags override it.",
                 show_default=False),
]
JsonOut = Annotated[
    Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.", show_default=False)
]
Workers = Annotated[
    Optional[int], typer.Option("-j", "--workers", help="Data loading worker processes (default: 4).",
                                show_default=False)
]
Arch = Annotated[
    Optional[str],
    typer.Option("-a", "--arch", help="resnet18/34/50/101/152, resnet_ibn50a, resnet_ibn101a (default: resnet50).",
                 show_default=False),
]
Pooling = Annotated[
    Optional[str], typer.Option("--pooling-type", help="gem | avg | max (default: gem).", show_default=False)
]
Pretrained = Annotated[
    Optional[str],
    typer.Option("--pretrained", help="imagenet | none | PATH: initial weights (none = random initialisation).",
                 show_default=False),
]
Height = Annotated[Optional[int], typer.Option("--height", help="Input height (default: 256).", show_default=False)]
Width = Annotated[Optional[int], typer.Option("--width", help="Input width (default: 128).", show_default=False)]
Flip = Annotated[
    Optional[bool], typer.Option("--flip/--no-flip", help="Average features of the image and its mirror.",
                                 show_default=False)
]
EXAMPLES_EPILOG = "Docs: README.md. Every flag can also come from --config FILE."
