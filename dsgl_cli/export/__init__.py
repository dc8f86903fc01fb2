"""Inference export (ONNX, TorchScript) verified against eager, named and described so a tracker loads it.

``core`` exports and verifies, ``writers`` writes and re-runs each format, ``contract`` holds what
BoxMOT needs beside the weights (file suffixes, the ``.metadata.json`` sidecar). ``core`` and
``writers`` load torch, so they are imported on first use: the command line lists the formats
without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dsgl_cli.export.contract import FORMATS, SUFFIX, default_output, metadata_path, tracker_backend

_CORE_NAMES = ("IMAGENET_MEAN", "IMAGENET_STD", "TOLERANCE", "ExportReport", "export_model")

__all__ = ["FORMATS", "SUFFIX", "default_output", "metadata_path", "tracker_backend", *_CORE_NAMES]


def __getattr__(name: str) -> Any:
    if name in _CORE_NAMES:
        return getattr(importlib.import_module("dsgl_cli.export.core"), name)
    raise AttributeError(f"module 'dsgl_cli.export' has no attribute {name!r}")
