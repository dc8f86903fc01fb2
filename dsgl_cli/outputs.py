"""Files the commands write for the user: checked before the work starts, written so nothing is lost.

`check_output` runs when a command starts, before anything is computed: a path that is a folder,
that cannot be written, or that is one of the command's own inputs (a checkpoint, say) is refused
with one line, so neither the user's file nor the results of a long run are lost. `check_output_dir`
does the same for an option naming a folder the command fills (--logs-dir, --show-dir). Results are typed
(dataclasses) inside the package; `to_jsonable` turns them into plain JSON, and `write_json` writes
to a temporary name in the same folder and renames it, so a failed write never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Optional

from dsgl_cli.errors import DsglError


def check_output(path: Optional[Path], flag: str, inputs: Iterable[Optional[Path]] = ()) -> Optional[Path]:
    """``path`` if the command may write it; else a one-line usage error naming ``flag``."""
    if path is None:
        return None
    path = Path(path)
    for source in inputs:
        if source is not None and same_path(path, Path(source)):
            raise DsglError(f"{flag} {path} is also an input of this command; write to another file", exit_code=2)
    if path.is_dir():
        raise DsglError(f"{flag} {path} is a folder; give a file name", exit_code=2)
    folder = _existing_parent(path)
    if not folder.is_dir():
        raise DsglError(f"{flag} {path}: {folder} is a file, not a folder", exit_code=2)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DsglError(f"{flag} {path}: no permission to write there", exit_code=2)
    return path


def check_output_dir(path: Optional[Path], flag: str) -> Optional[Path]:
    """``path`` if the command may create or fill that folder; else a one-line usage error naming ``flag``."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DsglError(f"{flag} {path} is a file; give a folder", exit_code=2)
    folder = path if path.is_dir() else _existing_parent(path)
    if not folder.is_dir():
        raise DsglError(f"{flag} {path}: {folder} is a file, not a folder", exit_code=2)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DsglError(f"{flag} {path}: no permission to write there", exit_code=2)
    return path


def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same existing file or folder (links and relative paths resolved)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_parent(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (where a missing chain of folders would be made)."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


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


def write_json(path: Path, result: Any, flag: str = "--json") -> Path:
    """Write ``result`` as indented JSON to ``path`` atomically; a failure is one clear line."""
    path = Path(path)
    text = json.dumps(to_jsonable(result), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:   # Ctrl-C included: no temporary file is left behind
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise DsglError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
        raise
    return path


def _remove_quietly(path: Path) -> None:
    """Delete a temporary file if it exists; a failure to delete it must not hide the first error."""
    try:
        path.unlink()
    except OSError:
        pass
