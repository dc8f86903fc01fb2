"""What a tracker needs beside the weights: file names it dispatches on and the sidecar it reads.

BoxMOT (v25) chooses its ReID backend from a file's last suffix alone (``.onnx`` -> ONNX Runtime,
``.torchscript`` -> TorchScript, ``.pt`` -> a checkpoint of one of its own architectures), and
reads the crop size of a model it did not build from ``<file>.metadata.json`` (its key
``model_kwargs.img_size``); without that it guesses from the file name or feeds 256x128 crops.
So dsgl names files by format and writes one sidecar under BoxMOT's name that holds dsgl's own
description of the model and, at the top level, the few keys BoxMOT reads. One file, because
BoxMOT ignores keys it does not know and a second JSON would only repeat the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIX: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript"}
SIDECAR_SUFFIX = ".metadata.json"
PREPROCESS = "resize"  # BoxMOT's name for a plain resize to the input size (no letterbox padding)
# How BoxMOT reads the last suffix of a ReID file (only the suffixes dsgl might be asked to write).
_TRACKER_BACKEND = {".onnx": "onnx", ".torchscript": "torchscript", ".pt": "pytorch"}
_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt")
# BoxMOT's sidecar schema and its model_kwargs schema; under version 1 it rejects unknown model_kwargs.
_SCHEMA_VERSION = 1
_MODEL_KWARGS_SCHEMA_VERSION = 1


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``logs/model_best.pth.tar`` -> ``logs/model_best.onnx`` (or ``.torchscript``)."""
    name = Path(checkpoint).name
    for suffix in _CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(checkpoint).with_name(name + SUFFIX[fmt])


def metadata_path(output: Path) -> Path:
    """``reid.onnx`` -> ``reid.onnx.metadata.json``: the one name BoxMOT looks for."""
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def tracker_backend(path: Path) -> str | None:
    """The ReID backend BoxMOT would choose for this file name (None: one it does not load)."""
    return _TRACKER_BACKEND.get(Path(path).suffix.lower())


def naming_warnings(output: Path, fmt: str) -> list[str]:
    """Say when an explicit --output name would make BoxMOT misread the file."""
    backend = tracker_backend(output)
    if backend == fmt:
        return []
    hint = f"name it *{SUFFIX[fmt]} to load it in BoxMOT"
    if backend == "pytorch":
        return [f"{Path(output).name}: BoxMOT takes a .pt file for a checkpoint of its own architectures "
                f"and will not load this {fmt} file; {hint}"]
    return [f"{Path(output).name}: BoxMOT chooses its ReID backend by the last suffix and would not read "
            f"this as {fmt}; {hint}"]


def tracker_fields(arch: str, height: int, width: int) -> dict[str, Any]:
    """The sidecar keys BoxMOT reads for ONNX and TorchScript files (input size, name, resize mode).

    ``model_name`` is set so BoxMOT neither guesses an architecture from the file name nor
    unpickles the file looking for one; it is prefixed so it never names a BoxMOT backbone.
    """
    return {
        "schema_version": _SCHEMA_VERSION,
        "model_name": f"dsgl_{arch}",
        "model_kwargs_schema_version": _MODEL_KWARGS_SCHEMA_VERSION,
        "model_kwargs": {"img_size": [int(height), int(width)]},
        "preprocess": PREPROCESS,
    }
