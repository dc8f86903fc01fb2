"""Typed run configuration: defaults < config file (YAML/TOML/JSON) < command-line flags.

Field names follow the reference training script's flags (method.md section 7) so that
``--num-instances`` is ``num_instances`` here and a config file uses the same words.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from dsgl_cli.errors import DsglError

ARCHITECTURES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_ibn50a", "resnet_ibn101a",
)
POOLINGS = ("gem", "avg", "max")
MEMORY_BANKS = ("DLhybrid", "CM", "CMhard")
DATASETS = ("market1501", "msmt17", "dukemtmcreid", "folder", "demo")

#: The flag each field is set by, for error messages that name what the user typed.
FLAGS: dict[str, str] = {
    "dataset": "-d/--dataset", "data_dir": "--data-dir", "height": "--height", "width": "--width",
    "workers": "-j/--workers", "arch": "-a/--arch", "pooling_type": "--pooling-type",
    "features": "--features", "dropout": "--dropout", "pretrained": "--pretrained",
    "eps": "--eps", "k1": "--k1", "k2": "--k2", "min_samples": "--min-samples",
    "batch_size": "-b/--batch-size", "num_instances": "--num-instances", "iters": "--iters",
    "epochs": "--epochs", "lr": "--lr", "weight_decay": "--weight-decay", "step_size": "--step-size",
    "momentum": "--momentum", "temp": "--temp", "memorybank": "--memorybank",
    "eval_step": "--eval-step", "print_freq": "--print-freq", "seed": "--seed",
    "logs_dir": "--logs-dir", "resume": "--resume", "device": "--device", "amp": "--amp/--no-amp",
    "flip": "--flip",
}


def suggest(value: str, choices: Iterable[str]) -> str:
    """A 'did you mean' tail for a mistyped choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choice(value: str, choices: tuple[str, ...], casefold: bool = True) -> str:
    for choice in choices:
        if value == choice or (casefold and value.lower() == choice.lower()):
            return choice
    raise ValueError(f"'{value}' is not one of {', '.join(choices)}{suggest(value, choices)}")


def _positive_int(v: int) -> int:
    """Field validator shared by the sections: counts and sizes must be at least 1."""
    if v < 1:
        raise ValueError(f"must be a positive integer, got {v}")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images are and how they are fed to the network (method.md sections 1, 3)."""

    dataset: str = "market1501"
    data_dir: Path = Path("data")
    height: int = 256
    width: int = 128
    workers: int = 4

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _choice(v, DATASETS)

    @field_validator("height", "width")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 16 <= v <= 1024:
            raise ValueError(f"must be between 16 and 1024 pixels, got {v}")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v


class ModelConfig(_Section):
    """Backbone, pooling and neck (method.md section 2)."""

    arch: str = "resnet50"
    pooling_type: str = "gem"
    features: int = 0
    dropout: float = 0.0
    pretrained: str = "imagenet"

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _choice(v, ARCHITECTURES)

    @field_validator("pooling_type")
    @classmethod
    def _pooling(cls, v: str) -> str:
        return _choice(v, POOLINGS)

    @field_validator("features")
    @classmethod
    def _features(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0 (0 = no embedding layer), got {v}")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v


class ClusterConfig(_Section):
    """k-reciprocal Jaccard distance and DBSCAN (method.md section 4)."""

    eps: float = 0.6
    k1: int = 30
    k2: int = 6
    min_samples: int = 4

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"must satisfy 0 < eps < 1 (Jaccard distances lie in [0, 1]), got {v}")
        return v

    _positive = field_validator("k1", "k2", "min_samples")(_positive_int)


class TrainConfig(_Section):
    """Optimisation, sampler and memory settings (method.md sections 3, 5, 7)."""

    batch_size: int = 64
    num_instances: int = 16
    iters: int = 400
    epochs: int = 50
    lr: float = 0.00035
    weight_decay: float = 5e-4
    step_size: int = 20
    momentum: float = 0.1
    temp: float = 0.05
    memorybank: str = "DLhybrid"
    eval_step: int = 1
    print_freq: int = 10
    seed: int = 1
    amp: bool = True
    flip: bool = False

    _positive = field_validator("batch_size", "num_instances", "iters", "epochs", "step_size", "eval_step",
                                "print_freq")(_positive_int)

    @field_validator("lr", "temp")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @field_validator("memorybank")
    @classmethod
    def _memorybank(cls, v: str) -> str:
        return _choice(v, MEMORY_BANKS)

    @model_validator(mode="after")
    def _instances_divide_batch(self) -> "TrainConfig":
        if self.batch_size % self.num_instances != 0:
            raise ValueError(
                f"--num-instances {self.num_instances} must divide -b/--batch-size {self.batch_size}"
            )
        return self


class RunConfig(_Section):
    """Everything one command needs; sections mirror the engine's stages."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    cluster: ClusterConfig = ClusterConfig()
    train: TrainConfig = TrainConfig()
    device: str = "auto"
    logs_dir: Optional[Path] = None
    resume: Optional[Path] = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", v.strip().lower()):
            raise ValueError(f"'{v}' is not one of auto, cpu, cuda, cuda:N")
        return v.strip().lower()


_SECTION_OF: dict[str, str] = {
    name: section
    for section, model in (("data", DataConfig), ("model", ModelConfig), ("cluster", ClusterConfig),
                           ("train", TrainConfig))
    for name in model.model_fields
}

#: Settings the bare ``-d demo`` uses where neither the config file nor a flag says otherwise:
#: sized so that a 2-core CPU trains the built-in data in minutes from random initialisation.
DEMO_PRESET: dict[str, Any] = {
    "arch": "resnet18", "pretrained": "none", "height": 64, "width": 32, "workers": 2,
    "epochs": 16, "iters": 30, "batch_size": 32, "num_instances": 4, "eps": 0.5, "k1": 20,
    "step_size": 14, "lr": 0.001, "eval_step": 1,
}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a flat or sectioned dict."""
    path = Path(path)
    if not path.is_file():
        raise DsglError(f"--config: file not found: {path}", exit_code=2)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found]
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # any parser's error is the user's file, not our bug
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DsglError(f"--config: cannot parse {path}: {first}", exit_code=2) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DsglError(f"--config: {path} must hold a mapping of settings", exit_code=2)
    return data


def _flatten(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept both flat keys (``eps: 0.7``) and sections (``cluster: {eps: 0.7}``); dashes allowed."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key in ("data", "model", "cluster", "train") and isinstance(value, dict):
            flat.update(_flatten(value, source))
        elif key == "pooling":
            flat["pooling_type"] = value
        elif key == "a" or key == "architecture":
            flat["arch"] = value
        else:
            flat[key] = value
    known = set(_SECTION_OF) | {"device", "logs_dir", "resume"}
    for key in flat:
        if key not in known:
            raise DsglError(f"{source}: unknown setting '{key}'{suggest(key, known)}", exit_code=2)
    return flat


def build_config(
    flags: dict[str, Any],
    config_file: Optional[Path] = None,
    presets: Optional[dict[str, Any]] = None,
) -> RunConfig:
    """Merge defaults < preset < config file < explicit flags (``None`` = flag not given) and validate."""
    merged: dict[str, Any] = {"data_dir": data_dir_default()}
    file_values = _flatten(read_config_file(config_file), f"--config {config_file}") if config_file else {}
    explicit = {k: v for k, v in flags.items() if v is not None}
    dataset = explicit.get("dataset", file_values.get("dataset"))
    if presets is None and isinstance(dataset, str) and dataset.lower() == "demo":
        presets = DEMO_PRESET
    for layer in (presets or {}, file_values, explicit):
        merged.update(layer)
    sections: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "cluster": {}, "train": {}}
    top: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _SECTION_OF:
            sections[_SECTION_OF[key]][key] = value
        else:
            top[key] = value
    try:
        return RunConfig(**top, **sections)
    except ValidationError as exc:
        raise DsglError(format_validation_error(exc), exit_code=2) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the flag and what it allows, from pydantic's first error."""
    err = exc.errors()[0]
    field = next((str(p) for p in reversed(err.get("loc", ())) if str(p) in FLAGS), None)
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if field is None:
        return msg
    if err.get("type") in ("int_parsing", "float_parsing", "int_from_float", "bool_parsing"):
        msg = f"{msg}, got {err.get('input')!r}"
    return f"{FLAGS[field]}: {msg}"


def data_dir_default() -> Path:
    """``--data-dir`` default: $DSGL_DATA_DIR, else ./data."""
    return Path(os.environ.get("DSGL_DATA_DIR") or "data")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """JSON-safe dict of the resolved config, for the run directory."""
    return json.loads(cfg.model_dump_json())
