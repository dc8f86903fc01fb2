"""Safe reading of torch files (weights_only=True) and state-dict unwrapping shared by weights and checkpoints."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dsgl_cli.errors import DsglError

_DP_PREFIX = "module."


def _numpy_safe_globals() -> list:
    """Numpy scalar/dtype reconstructors: the authors' checkpoints store best_mAP as a numpy float.

    Rebuilding a numpy scalar from (dtype, bytes) runs no user code, so allowing it keeps the
    weights_only guarantee. Both the numpy>=2 (``numpy._core``) and numpy<2 (``numpy.core``)
    spellings are listed because old files name the latter.
    """
    import importlib

    import numpy as np

    try:
        scalar = importlib.import_module("numpy._core.multiarray").scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy < 2
        scalar = importlib.import_module("numpy.core.multiarray").scalar
    allowed: list = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


def safe_load(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) that turns every failure into a one-line DsglError."""
    path = Path(path)
    if not path.exists():
        raise DsglError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise DsglError(f"{what} '{path}' is a directory, not a file; point to the .pth/.pth.tar file inside it")
    if path.stat().st_size == 0:
        raise DsglError(f"{what} '{path}' is empty (0 bytes); it was probably not written completely")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            detail = ""
            for line in text.splitlines():
                if "Unsupported global" in line:
                    detail = " (" + line.split("Unsupported global:")[-1].strip().split(" was ")[0] + ")"
                    break
            raise DsglError(
                f"{what} '{path}' holds Python objects beyond tensors and plain values{detail}, "
                "so it is refused for safety (weights_only); re-save it as a plain state dict"
            ) from None
        raise _unreadable(path, what) from None
    except Exception:  # garbage bytes fail in many ways (IndexError, KeyError, RuntimeError, ...)
        raise _unreadable(path, what) from None


def _unreadable(path: Path, what: str) -> DsglError:
    """The error for bytes torch cannot parse: a text file posing as a checkpoint, or a torn one."""
    kind = "a text file, not a torch file" if _looks_like_text(path) else (
        "not a readable torch file (truncated or corrupt; was it fully copied/written?)")
    return DsglError(f"{what} '{path}' is {kind}")


def _looks_like_text(path: Path) -> bool:
    """True when the first KiB decodes as UTF-8 without NUL bytes (a README, YAML or HTML page)."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping of str to tensors (what nn.Module.state_dict returns)."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded file (bare, or under 'state_dict') and strip DataParallel's 'module.'."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not is_state_dict(obj):
        raise DsglError(f"'{source}' holds no state dict (expected a mapping of parameter names to tensors)")
    return strip_prefix(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = _DP_PREFIX) -> dict[str, torch.Tensor]:
    """Drop a leading ``module.`` (nn.DataParallel) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
