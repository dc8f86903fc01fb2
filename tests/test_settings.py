"""Each setting declared once: flags, help defaults, config keys and resolved config all come from the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dsgl_cli.cli import app
from dsgl_cli.commands import cluster, evaluate, export, prepare, train
from dsgl_cli.config import ALL_SECTIONS, SECTIONS, RunConfig, build_config, config_to_dict
from dsgl_cli.settings import flags_of, help_text
from tests import independent

runner = CliRunner()
COMMANDS = {"prepare": prepare.SETTINGS, "train": train.SETTINGS, "cluster": cluster.SETTINGS,
            "evaluate": evaluate.SETTINGS, "export": export.SETTINGS}


def _fields():
    for section in ALL_SECTIONS:
        for name, field in section.model_fields.items():
            if name not in SECTIONS:
                yield name, field


def test_every_setting_has_its_flags_and_help_and_no_flag_is_taken_twice():
    seen: dict[str, str] = {}
    for name, field in _fields():
        flags = flags_of(field)
        assert flags and field.description, name
        assert f"--{name.replace('_', '-')}" in flags, (name, flags)   # the config key is the long flag
        for flag in flags:
            assert flag not in seen, (flag, name, seen.get(flag))
            seen[flag] = name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_each_setting_of_the_command_with_its_default(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output)
    fields = dict(_fields())
    for name in COMMANDS[command]:
        field = fields[name]
        assert flags_of(field)[-1] in text, (command, name)
        default = re.search(r"\(default [^)]*\)", help_text(field)).group(0)
        assert re.sub(r"\s+", " ", default) in text, (command, name, default)


def test_a_config_file_of_every_key_reproduces_the_resolved_config(tmp_path: Path):
    reference = build_config({"dataset": "demo", "eps": 0.55, "sync_bn": True, "flip": True, "seed": 7})
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(reference)))
    again = build_config({}, config_file=path)
    assert config_to_dict(again) == config_to_dict(reference)
    assert again.explicit >= {"eps", "sync_bn", "flip", "seed", "arch"}


def test_sync_bn_is_a_saved_setting(tmp_path: Path):
    cfg = build_config({"sync_bn": True})
    assert cfg.train.sync_bn is True and config_to_dict(cfg)["train"]["sync_bn"] is True
    path = tmp_path / "c.toml"
    path.write_text("[train]\nsync_bn = true\n")
    assert build_config({}, config_file=path).train.sync_bn is True


def test_print_config_shows_the_resolved_settings_without_touching_data(tmp_path: Path):
    result = runner.invoke(app, ["train", "-d", "market1501", "--data-dir", str(tmp_path / "nowhere"),
                                 "--eps", "0.45", "-mb", "CM", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    facts = printed.pop("run")
    assert printed == config_to_dict(RunConfig.model_validate(printed)) and facts["compute_dtype"] == "float32"
    assert printed["cluster"]["eps"] == 0.45 and printed["train"]["memorybank"] == "CM"
    assert not (tmp_path / "nowhere").exists()


def test_export_reads_the_input_size_from_the_config_file(tmp_path: Path):
    """--config means the same for every command: the authors' format stores no size, the file gives it."""
    path = tmp_path / "model_best.pth.tar"
    torch.save(independent.authors_checkpoint("resnet18", seed=4), path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  arch: resnet18\ndata:\n  height: 64\n  width: 32\n")
    out = tmp_path / "reid.onnx"
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["export", str(path), "--config", str(cfg), "--output", str(out), "--device", "cpu",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert (written["height"], written["width"], written["arch"]) == (64, 32, "resnet18")


def test_the_device_is_parsed_in_one_place():
    from dsgl_cli.runtime import parse_device, resolve_device

    assert parse_device(" CUDA:1 ") == "cuda:1"
    assert build_config({"device": "CPU"}).device == "cpu"
    with pytest.raises(ValueError):
        parse_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")


REFERENCE_PARSER = (  # every flag of the reference's examples/train.py with a value (method.md 7)
    "-d market1501 -b 64 -j 4 --height 256 --width 128 --num-instances 4 --eps 0.6 --eps-gap 0.02 --k1 30 --k2 6 "
    "-a resnet50 --features 0 --dropout 0 --smooth 0 --hard-weight 0.5 --momentum 0.1 --pooling-type gem "
    "-mb DLhybrid --lr 0.00035 --weight-decay 5e-4 --epochs 50 --iters 400 --step-size 20 --seed 1 "
    "--print-freq 10 --eval-step 1 --temp 0.05 --data-dir data --logs-dir logs"
)


def test_print_config_shows_the_reference_defaults_and_every_reference_flag_parses(tmp_path: Path):
    bare = runner.invoke(app, ["train", "--print-config", "--device", "cpu"])
    assert bare.exit_code == 0, bare.output
    printed = yaml.safe_load(bare.output)
    assert printed["train"]["num_instances"] == 4 and printed["amp"] is False
    assert printed["run"]["bn_groups"] == 1 and printed["run"]["compute_dtype"] == "float32"
    # the thread count changes a CPU run's rounding, so a run records it (issue 22: 1 vs 2 threads)
    assert printed["run"]["cpu_threads"] == torch.get_num_threads()
    full = runner.invoke(app, ["train", *REFERENCE_PARSER.split(), "--print-config", "--device", "cpu"])
    assert full.exit_code == 0, full.output
    again = yaml.safe_load(full.output)
    given = {"data_dir": "data", "workers": 4}   # -j 4 is the reference's; the default is at most the cores here
    for section in ("data", "model", "cluster", "train"):
        assert again[section] == {**printed[section], **(given if section == "data" else {})}
    assert again["logs_dir"] == "logs"


def test_the_unfinished_memory_bank_is_refused_with_the_reason():
    result = runner.invoke(app, ["train", "-mb", "DLhybrid_v2", "--print-config"])
    assert result.exit_code == 2 and "unfinished" in result.output and "not the paper's method" in result.output


def test_a_run_config_yaml_reads_back_as_a_config_file(tmp_path: Path):
    """config.yaml holds the settings and a `run` section of facts; read back, the facts are skipped."""
    text = runner.invoke(app, ["train", "--eps", "0.45", "--print-config", "--device", "cpu"]).output
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert build_config({}, config_file=path).cluster.eps == 0.45
