"""Typed run configuration, each setting declared once: defaults < preset < config file < flags.

Field names follow the reference training script's flags (method.md 7), so ``--num-instances`` is
``num_instances`` here and in a config file (flat, or under the section names below). The flags,
their help and the choices are declared with each field (`settings.setting`); the commands' Typer
options are generated from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dsgl_cli.config_file import read_config_file
from dsgl_cli.data.datasets import DATASETS
from dsgl_cli.errors import DsglError, check_choice, suggest
from dsgl_cli.method import MEMORY_BANKS, UNFINISHED_MEMORY_BANKS
from dsgl_cli.models import ARCHITECTURES, POOLINGS
from dsgl_cli.runtime import default_workers, parse_device
from dsgl_cli.settings import choices_of, flag_label, setting

DATA_DIR_ENV = "DSGL_DATA_DIR"
#: the section of a run's config.yaml that records facts of the run (device, precision, world size),
#: not settings; it is skipped when the file is read back as --config
RUN_FACTS = "run"


class Section(BaseModel):
    """A group of settings; unknown keys, NaN and infinities are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> Any:
        """Choice settings match case-insensitively and return the canonical spelling."""
        field = cls.model_fields.get(info.field_name or "")
        choices = choices_of(field) if field is not None else None
        if choices is None or value is None:
            return value
        for choice in choices:
            if str(value).lower() == choice.lower():
                return choice
        raise ValueError(f"'{value}' is not one of {', '.join(choices)}{suggest(str(value), choices)}")


#: the choices of --augment-on (data.device_batches)
AUGMENT_ON: tuple[str, ...] = ("auto", "loader", "device")
COMPILE_CHOICES: tuple[str, ...] = ("auto", "on", "off")


class DataConfig(Section):
    """Where the images are and how they are fed to the network (method.md 1, 3)."""

    dataset: str = setting("market1501", "-d", "--dataset", choices=DATASETS,
                           help="Data set (demo, and demo-market at Market-1501's size, are generated on first use).")
    data_dir: Path = setting(Path("data"), "--data-dir", default_text=f"${DATA_DIR_ENV} or ./data",
                             help="Folder holding the data sets.")
    height: int = setting(256, "--height", help="Input height in pixels.")
    width: int = setting(128, "--width", help="Input width in pixels.")
    workers: int = setting(4, "-j", "--workers", ge=0, factory=default_workers,
                           default_text="4, or the CPU cores this process may use where fewer",
                           help="Data-loading worker processes.")
    augment_on: str = setting("auto", "--augment-on", choices=AUGMENT_ON,
                              help="Where train images are augmented: loader (decoded and augmented one by one with "
                                   "PIL in worker processes, the reference's way), device (decoded once into memory, "
                                   "whole batches augmented on the training device: the same draws, pixels within "
                                   "one grey level of PIL's) or auto (device on CUDA, loader elsewhere).")

    @field_validator("height", "width")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 16 <= v <= 1024:
            raise ValueError(f"must be between 16 and 1024 pixels, got {v}")
        return v


class ModelConfig(Section):
    """Backbone, pooling and neck (method.md 2)."""

    arch: str = setting("resnet50", "-a", "--arch", choices=ARCHITECTURES, help="Backbone.")
    pooling_type: str = setting("gem", "--pooling-type", choices=POOLINGS, help="Global pooling.")
    features: int = setting(0, "--features", ge=0, help="Embedding layer size; 0 = none.")
    dropout: float = setting(0.0, "--dropout", help="Dropout after the neck.")
    pretrained: str = setting("imagenet", "--pretrained",
                              help="Initial weights: imagenet (torchvision's original files, the reference's), "
                                   "imagenet-v2 (its later recipe, only when asked), none (random) or a file.")

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v


#: the choices of --jaccard: the paper's k-reciprocal distance, or CA-Jaccard (docs/ca-jaccard.md)
JACCARD_KINDS: tuple[str, ...] = ("kreciprocal", "camera-aware")
#: the --eps value that chooses eps at every clustering without labels (clustering/eps_auto.py)
EPS_AUTO = "auto"


class ClusterConfig(Section):
    """k-reciprocal Jaccard distance and DBSCAN (method.md 4)."""

    eps: Union[float, str] = setting(0.6, "--eps", help="DBSCAN eps on the Jaccard distance, or auto: chosen at "
                                                         "every clustering without labels (docs/eps-auto.md).")
    k1: int = setting(30, "--k1", ge=1, help="k-reciprocal neighbourhood size.")
    k2: int = setting(6, "--k2", ge=1, help="Local query expansion size (1: none, in both --jaccard modes).")
    min_samples: int = setting(4, "--min-samples", ge=1, help="DBSCAN min_samples.")
    jaccard: str = setting("kreciprocal", "--jaccard", choices=JACCARD_KINDS,
                           help="Clustering distance: the paper's k-reciprocal Jaccard (--k1, --k2) or CA-Jaccard "
                                "(CVPR 2024; needs camera ids; docs/ca-jaccard.md).")
    k1_intra: int = setting(5, "--k1-intra", ge=1, help="camera-aware: reciprocal list size within a camera.")
    k1_inter: int = setting(20, "--k1-inter", ge=1, help="camera-aware: reciprocal list size across cameras.")
    k2_intra: int = setting(2, "--k2-intra", ge=1, help="camera-aware: expansion over this many same-camera "
                                                        "neighbours, itself included (training: 3 at epoch 1).")
    k2_inter: int = setting(4, "--k2-inter", ge=0, help="camera-aware: expansion over this many other-camera "
                                                        "neighbours (training: 3 at epoch 1).")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().lower() == EPS_AUTO:
                return EPS_AUTO
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"must be a number between 0 and 1 or auto, got '{v}'") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"must be a number between 0 and 1 or auto, got {v!r}")
        if not 0.0 < v < 1.0:
            raise ValueError(f"must satisfy 0 < eps < 1 (Jaccard distances lie in [0, 1]), got {v}")
        return float(v)


class TrainConfig(Section):
    """Optimisation, sampler and memory settings (method.md 3, 5, 7)."""

    batch_size: int = setting(64, "-b", "--batch-size", ge=1, help="Global batch size.")
    num_instances: int = setting(4, "--num-instances", ge=0,
                                 help="Images per pseudo identity in a batch; 0 = no identity sampler (shuffled "
                                      "clustered images). The seed's lines pass 16.")
    iters: int = setting(400, "--iters", ge=0, help="Iterations per epoch; 0 = one pass of the sampler.")
    epochs: int = setting(50, "--epochs", ge=0,
                          help="Epochs; 0 = only the model before training (model_init.pth, its figures).")
    lr: float = setting(0.00035, "--lr", gt=0, help="Adam learning rate.")
    weight_decay: float = setting(5e-4, "--weight-decay", ge=0, help="Adam weight decay.")
    step_size: int = setting(20, "--step-size", ge=1, help="StepLR step in epochs.")
    momentum: float = setting(0.1, "--momentum", help="Memory momentum m.")
    temp: float = setting(0.05, "--temp", gt=0, help="Temperature of L_m (L_dis, L_kl keep 0.05, as the reference).")
    smooth: float = setting(0.0, "--smooth", ge=0,
                            help="> 0: the reference's top-k label smoothing of L_m, always with weight 0.1.")
    hard_weight: float = setting(0.5, "--hard-weight", help="Parsed by the reference but never read by DLhybrid.")
    eps_gap: float = setting(0.02, "--eps-gap", help="Parsed by the reference but never read by DLhybrid.")
    memorybank: str = setting("DLhybrid", "-mb", "--memorybank", choices=MEMORY_BANKS,
                              help="Memory: the paper's hybrid memory or a Cluster Contrast baseline.")
    bn_groups: Optional[int] = setting(None, "--bn-groups", ge=1, default_text="1; under torchrun the world size",
                                       help="BatchNorm statistics over this many contiguous chunks of the batch, "
                                            "as the reference's DataParallel on that many GPUs.")
    eval_step: int = setting(1, "--eval-step", ge=1, help="Evaluate every N epochs.")
    print_freq: int = setting(10, "--print-freq", ge=1, help="Log every N iterations.")
    seed: int = setting(1, "--seed", ge=0, help="Random seed.")
    sync_bn: bool = setting(False, "--sync-bn", help="SyncBatchNorm across ranks under torchrun (GPUs only).")
    tensorboard: bool = setting(False, "--tensorboard",
                                help="Also write TensorBoard scalars to the run directory (needs tensorboard).")

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @field_validator("memorybank", mode="before")
    @classmethod
    def _unfinished(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in (k.lower() for k in UNFINISHED_MEMORY_BANKS):
            raise ValueError(UNFINISHED_MEMORY_BANKS["DLhybrid_v2"])
        return v

    @model_validator(mode="after")
    def _instances_divide_batch(self) -> "TrainConfig":
        if self.num_instances and self.batch_size % self.num_instances != 0:
            raise ValueError(
                f"--num-instances {self.num_instances} must divide -b/--batch-size {self.batch_size}"
            )
        if self.bn_groups is not None and self.batch_size % self.bn_groups != 0:
            raise ValueError(f"--bn-groups {self.bn_groups} must divide -b/--batch-size {self.batch_size}")
        return self


class EvalConfig(Section):
    """Query/gallery evaluation (method.md 6)."""

    flip: bool = setting(False, "--flip", help="Average the features of each image and its mirror.")


class RunConfig(Section):
    """Everything one command needs; the sections mirror the pipeline's stages."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    cluster: ClusterConfig = ClusterConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    device: str = setting("auto", "--device", help="auto, cpu, cuda or cuda:N.")
    amp: bool = setting(False, "--amp", help="Mixed precision on CUDA: bf16 autocast (fp16 with loss scaling where "
                                             "bf16 is missing); float32 otherwise, as the reference.")
    channels_last: bool = setting(True, "--channels-last", help="channels_last memory layout on CUDA (speed only; "
                                                               "no effect on the CPU).")
    compile: str = setting("auto", "--compile", choices=COMPILE_CHOICES,
                           help="torch.compile the model and the DSGL step (auto: on CUDA only); a run whose "
                                "compilation fails goes on eagerly and says so.")
    logs_dir: Optional[Path] = setting(None, "--logs-dir", default_text="runs/<dataset>, numbered when taken",
                                       help="Run directory.")
    resume: Optional[Path] = setting(None, "--resume", help="Continue a run from its checkpoint.pth (or run dir).")
    _explicit: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return parse_device(v)

    @property
    def explicit(self) -> frozenset[str]:
        """Settings the user gave (a flag or the config file), as opposed to defaults and presets."""
        return self._explicit


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig, "model": ModelConfig, "cluster": ClusterConfig, "train": TrainConfig, "eval": EvalConfig,
}
_SECTION_OF: dict[str, str] = {name: section for section, model in SECTIONS.items() for name in model.model_fields}
TOP_LEVEL = tuple(n for n in RunConfig.model_fields if n not in SECTIONS)
#: every config section, for looking a setting up by name (settings.options)
ALL_SECTIONS: tuple[type[Section], ...] = (*SECTIONS.values(), RunConfig)

#: Named presets (``dsgl train --preset NAME``), a layer under --config and the flags. ``cpu-small`` is
#: sized so that a 2-core CPU trains about 1,400 crops in minutes from random initialisation (the bare
#: ``-d demo`` uses it: README, 4-6 min for the demo on such a machine).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {
        "arch": "resnet18", "pretrained": "none", "height": 64, "width": 32, "workers": min(2, default_workers()),
        "epochs": 16, "iters": 30, "batch_size": 32, "num_instances": 4, "eps": 0.5, "k1": 20,
        "step_size": 14, "lr": 0.001, "eval_step": 1,
    },
}
#: the preset the bare ``-d demo`` uses where neither the config file nor a flag says otherwise
DEMO_PRESET: dict[str, Any] = PRESETS["cpu-small"]


def _flatten(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept both flat keys (``eps: 0.7``) and sections (``cluster: {eps: 0.7}``); dashes allowed."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key == RUN_FACTS and isinstance(value, dict):
            continue
        if key in SECTIONS and isinstance(value, dict):
            flat.update(_flatten(value, source))
        else:
            flat[key] = value
    known = set(_SECTION_OF) | set(TOP_LEVEL)
    for key in flat:
        if key not in known:
            raise DsglError(f"{source}: unknown setting '{key}'{suggest(key, known)}", exit_code=2)
    return flat


def build_config(
    flags: dict[str, Any],
    config_file: Optional[Path] = None,
    presets: Optional[dict[str, Any]] = None,
    preset: Optional[str] = None,
    saved: Optional[dict[str, Any]] = None,
) -> RunConfig:
    """Merge defaults < preset < saved < config file < explicit flags (``None`` = flag not given) and validate.

    The preset layer is ``presets`` where given, else the named ``preset``, else the demo's for ``-d demo``;
    ``saved`` is a checkpoint's own settings (``dsgl cluster`` takes its run's clustering settings).
    """
    merged: dict[str, Any] = {"data_dir": data_dir_default()}
    file_values = _flatten(read_config_file(config_file), f"--config {config_file}") if config_file else {}
    explicit = {k: v for k, v in flags.items() if v is not None}
    unknown = [k for k in explicit if k not in _SECTION_OF and k not in TOP_LEVEL]
    if unknown:
        raise KeyError(f"not a setting: {', '.join(unknown)}")
    dataset = explicit.get("dataset", file_values.get("dataset"))
    if presets is None and preset is not None:
        presets = PRESETS[check_choice(preset, PRESETS, "--preset")]
    if presets is None and isinstance(dataset, str) and dataset.lower() == "demo":
        presets = DEMO_PRESET
    for layer in (presets or {}, saved or {}, file_values, explicit):
        merged.update(layer)
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _SECTION_OF:
            sections[_SECTION_OF[key]][key] = value
        else:
            top[key] = value
    try:
        cfg = RunConfig.model_validate({**top, **sections})
    except ValidationError as exc:
        raise DsglError(format_validation_error(exc), exit_code=2) from None
    cfg._explicit = frozenset(file_values) | frozenset(explicit)
    return cfg


_RANGE_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the flag and what it allows, from pydantic's first error."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    name = next((p for p in reversed(loc) if p in _SECTION_OF or p in TOP_LEVEL), None)
    kind = str(err.get("type", ""))
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind in _RANGE_WORDS:
        limit = next(iter(ctx.values()))
        if kind == "greater_than_equal" and limit == 1 and isinstance(value, int):
            msg = f"must be a positive integer, got {value}"
        else:
            msg = f"must be {_RANGE_WORDS[kind]} {limit}, got {value}"
    elif kind == "finite_number":
        msg = f"must be a finite number, got {value}"
    else:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if kind in ("int_parsing", "float_parsing", "int_from_float", "bool_parsing", "int_type", "float_type"):
            msg = f"{msg}, got {value!r}"
    if name is None:
        return msg
    section = SECTIONS.get(_SECTION_OF.get(name, ""), RunConfig)
    return f"{flag_label(section.model_fields[name], name)}: {msg}"


def data_dir_default() -> Path:
    """``--data-dir`` default: $DSGL_DATA_DIR, else ./data."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """JSON-safe dict of the resolved config, for the run directory and checkpoints."""
    return cfg.model_dump(mode="json")


def flatten_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as saved in a checkpoint, as one flat preset layer (run paths dropped)."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        flat.update(saved.get(section, {}))
    for key in ("device", "amp", "channels_last", "compile"):
        if key in saved:
            flat[key] = saved[key]
    return {k: v for k, v in flat.items() if k in _SECTION_OF or k in TOP_LEVEL}
