"""Validation of named choices with a "did you mean" hint, shared by the model factory and export."""

from __future__ import annotations

import difflib
from typing import Iterable

from dsgl_cli.errors import DsglError


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """Normalise ``value`` (strip, lower case) and fail with the choices and a hint when unknown."""
    choices = tuple(choices)
    name = str(value).strip().lower()
    if name not in choices:
        raise DsglError(
            f"unknown {what} '{value}'{did_you_mean(name, choices)}; choose one of {', '.join(choices)}",
            exit_code=2,
        )
    return name
