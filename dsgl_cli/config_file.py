"""--config files: YAML, TOML or JSON, read into a flat or sectioned dict of settings (`config.py`
checks the names and values). A file the user wrote that cannot be read or parsed is one line that
says where.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsgl_cli.errors import DsglError


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a flat or sectioned dict."""
    path = Path(path)
    if not path.is_file():
        raise DsglError(f"--config: file not found: {path}", exit_code=2)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DsglError(f"--config: {path} is not UTF-8 text; save it as UTF-8", exit_code=2) from None
    except OSError as exc:
        raise DsglError(f"--config: cannot read {path}: {exc.strerror or exc}", exit_code=2) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found,unused-ignore]
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # any parser's error is the user's file, not our bug
        raise DsglError(f"--config: cannot parse {path}{_where(exc)}: {_first_line(exc)}", exit_code=2) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DsglError(f"--config: {path} must hold a mapping of settings", exit_code=2)
    return data


def _where(exc: Exception) -> str:
    """' at line L, column C' where the parser says (YAML marks, JSON and TOML positions)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}"
    line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    return f" at line {line}, column {col}" if line is not None and col is not None else ""


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "problem", None) or getattr(exc, "msg", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
