"""Config merge order and validation: one line naming the flag, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsgl_cli.config import DEMO_PRESET, build_config, suggest
from dsgl_cli.errors import DsglError


def test_defaults_follow_the_reference_flags():
    from dsgl_cli.runtime import usable_cpus

    cfg = build_config({})
    assert (cfg.train.batch_size, cfg.train.iters, cfg.train.epochs, cfg.train.step_size) == (64, 400, 50, 20)
    assert (cfg.cluster.eps, cfg.cluster.k1, cfg.cluster.k2) == (0.6, 30, 6)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.temp, cfg.train.momentum) == (0.00035, 5e-4, 0.05, 0.1)
    assert (cfg.data.height, cfg.data.width, cfg.data.workers) == (256, 128, min(4, usable_cpus()))
    model = cfg.model
    assert (model.arch, model.pooling_type, model.features, model.dropout) == ("resnet50", "gem", 0, 0.0)
    assert (cfg.train.seed, cfg.train.print_freq, cfg.train.eval_step, cfg.train.memorybank) == (1, 10, 1, "DLhybrid")
    train = cfg.train
    assert (train.num_instances, train.smooth, train.hard_weight, train.eps_gap) == (4, 0.0, 0.5, 0.02)
    assert (cfg.amp, cfg.channels_last, train.bn_groups) == (False, True, None)   # float32, one BN group


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_merge_order_defaults_file_flags(tmp_path: Path, suffix: str):
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".yaml":
        path.write_text("eps: 0.5\ncluster:\n  k1: 20\ntrain:\n  epochs: 7\nbatch-size: 32\n")
    elif suffix == ".toml":
        path.write_text("eps = 0.5\nbatch_size = 32\n[cluster]\nk1 = 20\n[train]\nepochs = 7\n")
    else:
        path.write_text(json.dumps({"eps": 0.5, "batch_size": 32, "cluster": {"k1": 20}, "train": {"epochs": 7}}))
    cfg = build_config({"eps": 0.7, "k2": None}, config_file=path)
    assert cfg.cluster.eps == 0.7          # the flag beats the file
    assert cfg.cluster.k1 == 20            # the file beats the default
    assert cfg.train.epochs == 7
    assert cfg.train.batch_size == 32
    assert cfg.cluster.k2 == 6             # unset flag (None) leaves the default


def test_env_data_dir_sits_under_file_and_flag(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DSGL_DATA_DIR", "/from/env")
    assert build_config({}).data.data_dir == Path("/from/env")
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: /from/file\n")
    assert build_config({}, config_file=path).data.data_dir == Path("/from/file")
    assert build_config({"data_dir": Path("/flag")}, config_file=path).data.data_dir == Path("/flag")


def test_demo_preset_applies_only_where_nothing_else_speaks(tmp_path: Path):
    cfg = build_config({"dataset": "demo"})
    assert cfg.model.arch == DEMO_PRESET["arch"] and cfg.data.height == DEMO_PRESET["height"]
    cfg = build_config({"dataset": "demo", "arch": "resnet34", "epochs": 2})
    assert cfg.model.arch == "resnet34" and cfg.train.epochs == 2 and cfg.data.width == DEMO_PRESET["width"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"batch_size": 0}, "-b/--batch-size: must be a positive integer, got 0"),
        ({"batch_size": -4}, "-b/--batch-size: must be a positive integer, got -4"),
        ({"iters": -1}, "--iters: must be >= 0, got -1"),
        ({"seed": -3}, "--seed: must be >= 0, got -3"),
        ({"lr": float("nan")}, "--lr: must be a finite number, got nan"),
        ({"memorybank": "DLhybrid_v2"}, "unfinished and it is not the paper's method"),
        ({"bn_groups": 3}, "--bn-groups 3 must divide -b/--batch-size 64"),
        ({"eps": 1.2}, "--eps: must satisfy 0 < eps < 1"),
        ({"eps": 0.0}, "--eps: must satisfy 0 < eps < 1"),
        ({"num_instances": 5}, "--num-instances 5 must divide -b/--batch-size 64"),
        ({"arch": "resnet5O"}, "-a/--arch: 'resnet5O' is not one of"),
        ({"pooling_type": "gen"}, "--pooling-type: 'gen' is not one of gem, avg, max; did you mean 'gem'?"),
        ({"memorybank": "DLhybird"}, "did you mean 'DLhybrid'?"),
        ({"dataset": "markt1501"}, "did you mean 'market1501'?"),
        ({"device": "gpu"}, "--device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
        ({"lr": -1.0}, "--lr: must be > 0"),
        ({"dropout": 1.0}, "--dropout: must be in [0, 1)"),
        ({"k1": 0}, "--k1: must be a positive integer"),
        ({"height": 4}, "--height: must be between 16 and 1024"),
    ],
)
def test_each_validation_error_is_one_line_naming_the_flag(flags, expected):
    with pytest.raises(DsglError) as info:
        build_config(flags)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_arch_typo_suggests_the_close_name():
    with pytest.raises(DsglError, match="did you mean 'resnet50'"):
        build_config({"arch": "resnet5O"})
    assert suggest("zzzz", ["gem", "avg"]) == ""


def test_config_file_errors(tmp_path: Path):
    with pytest.raises(DsglError, match="--config: file not found"):
        build_config({}, config_file=tmp_path / "absent.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("eps = = 1\n")
    with pytest.raises(DsglError, match="cannot parse"):
        build_config({}, config_file=bad)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("epoch: 3\n")
    with pytest.raises(DsglError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        build_config({}, config_file=unknown)
    listy = tmp_path / "l.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(DsglError, match="mapping"):
        build_config({}, config_file=listy)


def test_the_cpu_small_preset_fits_any_data_set_under_the_config_file_and_the_flags(tmp_path: Path):
    from dsgl_cli.config import PRESETS

    cfg = build_config({"dataset": "folder"}, preset="cpu-small")
    small = PRESETS["cpu-small"]
    assert small is DEMO_PRESET   # declared once: the demo's settings
    assert (cfg.model.arch, cfg.model.pretrained, cfg.data.height, cfg.train.epochs, cfg.train.iters) == \
        (small["arch"], "none", small["height"], small["epochs"], small["iters"])
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nk1: 15\n")
    cfg = build_config({"dataset": "folder", "k1": 12}, config_file=path, preset="CPU-small")
    assert (cfg.train.epochs, cfg.cluster.k1, cfg.cluster.eps) == (5, 12, small["eps"])
    with pytest.raises(DsglError, match="--preset: 'cpu-smal' is not one of cpu-small; did you mean 'cpu-small'"):
        build_config({}, preset="cpu-smal")


def test_workers_default_to_the_cores_this_process_may_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert build_config({}).data.workers == 2          # torch warns above the cores there are
    assert build_config({"workers": 3}).data.workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert build_config({}).data.workers == 4          # the reference's default where there are enough


def test_epochs_zero_is_allowed_and_negative_is_not():
    assert build_config({"epochs": 0}).train.epochs == 0
    with pytest.raises(DsglError, match="--epochs: must be >= 0, got -1"):
        build_config({"epochs": -1})
