"""Files the commands write for the user: the one writer of ``--json`` results.

Results are typed (dataclasses) inside the package; `to_jsonable` turns them, and the paths, NumPy
values and tensors inside them, into plain JSON. Files are written to a temporary name in the same
folder and renamed, so a failed write never leaves half a file where the previous one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsgl_cli.errors import DsglError


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values of a result: dataclasses, mappings, sequences, paths, NumPy and torch scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars, torch tensors
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def write_json(path: Path, result: Any) -> Path:
    """Write ``result`` as indented JSON to ``path`` atomically; a failure is one clear line."""
    path = Path(path)
    text = json.dumps(to_jsonable(result), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise DsglError(f"--json {path}: cannot write: {exc.strerror or exc}") from None
    return path


def _remove_quietly(path: Path) -> None:
    """Delete a temporary file if it exists; a failure to delete it must not hide the first error."""
    try:
        path.unlink()
    except OSError:
        pass
