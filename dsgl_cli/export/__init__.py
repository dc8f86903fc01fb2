"""Inference export (ONNX, TorchScript) verified against eager, named and described so a tracker loads it.

``core`` exports and verifies, ``writers`` writes and re-runs each format, ``contract`` holds what
BoxMOT needs beside the weights (file suffixes, the ``.metadata.json`` sidecar).
"""

from __future__ import annotations

from dsgl_cli.export.contract import FORMATS, SUFFIX, default_output, metadata_path, tracker_backend
from dsgl_cli.export.core import IMAGENET_MEAN, IMAGENET_STD, TOLERANCE, ExportReport, export_model

__all__ = ["FORMATS", "SUFFIX", "IMAGENET_MEAN", "IMAGENET_STD", "TOLERANCE", "ExportReport", "default_output",
           "export_model", "metadata_path", "tracker_backend"]
