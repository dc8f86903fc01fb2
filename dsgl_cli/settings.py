"""Each setting is declared once, as a pydantic field with its flags and help (`setting()`).

Everything else is generated from that declaration: the Typer options of every command that takes
the setting (`options()`), the "(default X)" help text, the error message that names the flag, the
config-file key (the field name; dashes allowed) and the resolved `config.yaml`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence, Union, get_args, get_origin

import typer
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

#: Keys of a field's ``json_schema_extra`` that this module reads.
_FLAGS, _CHOICES, _DEFAULT_TEXT, _CLI_DEFAULT = "flags", "choices", "default_text", "cli_default"


def setting(default: Any, *flags: str, help: str, choices: Sequence[str] | None = None,
            default_text: str | None = None, factory: Callable[[], Any] | None = None, **constraints: Any) -> Any:
    """A config field with the flags that set it (``"-b", "--batch-size"``) and its help.

    ``choices`` are matched case-insensitively with a "did you mean" on error; ``default_text``
    replaces the default in the help where the default is not a plain value; ``factory`` computes the
    default when a config is built (one that depends on the machine) in place of ``default``;
    ``constraints`` are pydantic's (``ge=1``, ...).
    """
    extra: dict[str, Any] = {_FLAGS: list(flags)}
    if choices is not None:
        extra[_CHOICES] = list(choices)
    if default_text is not None:
        extra[_DEFAULT_TEXT] = default_text
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flags_of(field: FieldInfo) -> list[str]:
    """The command-line flags of a setting ([] for settings without a flag)."""
    return list(_extra(field).get(_FLAGS, []))


def choices_of(field: FieldInfo) -> Optional[tuple[str, ...]]:
    """The allowed values of a choice setting, or None."""
    values = _extra(field).get(_CHOICES)
    return tuple(values) if values is not None else None


def flag_label(field: FieldInfo, name: str) -> str:
    """How error messages name a setting: its flags joined by '/', else the config key."""
    flags = flags_of(field)
    if _bool_field(field) and flags:
        return flags[-1].split("/")[0] if "/" in flags[-1] else flags[-1]
    return "/".join(flags) if flags else name


def _bool_field(field: FieldInfo) -> bool:
    return _plain_type(field.annotation) is bool


def _plain_type(annotation: Any) -> Any:
    """``Optional[X]`` -> X; anything else unchanged."""
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_text(field: FieldInfo) -> str:
    extra = _extra(field)
    if _DEFAULT_TEXT in extra:
        return str(extra[_DEFAULT_TEXT])
    default = field.get_default(call_default_factory=True)
    if _bool_field(field):
        return "on" if default else "off"
    if default is None:
        return "none"
    return str(default)


def help_text(field: FieldInfo) -> str:
    """The help line of a flag: the declared help, the choices and the default."""
    text = field.description or ""
    choices = choices_of(field)
    if choices:
        text += f" One of: {', '.join(choices)}."
    return f"{text} (default {_default_text(field)})"


def parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """A keyword parameter whose annotation is the Typer option of a setting (None = not given)."""
    flags = flags_of(field)
    kind = _plain_type(field.annotation)
    if kind is bool:
        flags = flags if any("/" in f for f in flags) else [f"{flags[-1]}/--no-{flags[-1].lstrip('-')}"]
    elif kind not in (int, float, str, Path):
        kind = str
    option = typer.Option(*flags, help=help_text(field), show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])


def options(sections: Sequence[type[BaseModel]], names: Sequence[str]) -> list[inspect.Parameter]:
    """Typer parameters for the named settings, looked up in the given config sections."""
    fields: dict[str, FieldInfo] = {}
    for section in sections:
        fields.update(section.model_fields)
    missing = [n for n in names if n not in fields]
    if missing:
        raise KeyError(f"no such setting: {', '.join(missing)}")
    return [parameter(n, fields[n]) for n in names]


def with_signature(func: Callable[..., Any], params: Sequence[inspect.Parameter]) -> Callable[..., Any]:
    """Give ``func(**kwargs)`` the explicit signature Typer reads its options from."""
    ordered = sorted(params, key=lambda p: p.kind)   # positional arguments before keyword-only options
    func.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    return func
