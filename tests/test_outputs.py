"""Outputs a careless command line names: refused before any work when they would destroy an input or cannot
be written, so the trained model survives a slip and a long run never ends in an unwritable file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli import outputs
from dsgl_cli.cli import app
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, check_output_dir, write_json

runner = CliRunner()

needs_permissions = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere; see the os.access case")


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch) -> Path:
    """A checkpoint file in the working folder; loading any model fails the test (nothing may start)."""
    from dsgl_cli.models import checkpoint as ckpt

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 7}, path)

    def no_work(*args, **kwargs):
        raise AssertionError("the command started working before checking its outputs")

    monkeypatch.setattr(ckpt, "load_model", no_work)
    monkeypatch.setattr(ckpt, "load_checkpoint", no_work)
    return path


@pytest.mark.parametrize("argv, flag", [
    (["export", "ck.pth", "--format", "torchscript", "-o", "ck.pth"], "--output"),
    (["export", "ck.pth", "--format", "onnx", "--output", "./ck.pth"], "--output"),
    (["evaluate", "ck.pth", "--json", "ck.pth", "-d", "demo"], "--json"),
    (["cluster", "ck.pth", "--output", "ck.pth", "-d", "demo"], "--output"),
    (["cluster", "ck.pth", "--json", "{abs}", "-d", "demo"], "--json"),
    (["export", "ck.pth", "--json", "{link}"], "--json"),
    (["evaluate", "ck.pth", "--json", "{hard}", "-d", "demo"], "--json"),
])
def test_an_output_that_is_the_input_is_refused_and_the_input_stays(checkpoint: Path, argv, flag):
    os.symlink(checkpoint, checkpoint.with_name("link.pth"))
    os.link(checkpoint, checkpoint.with_name("hard.pth"))
    names = {"{abs}": str(checkpoint), "{link}": "link.pth", "{hard}": "hard.pth"}
    argv = [names.get(a, a) for a in argv]
    before = checkpoint.read_bytes()
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    out = Path(argv[argv.index(next(a for a in argv if a in (flag, "-o"))) + 1])
    assert result.stderr.splitlines() == [
        f"error: {flag} {out} is also an input of this command; write to another file"]
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["ck.pth", "hard.pth", "link.pth"]


def test_train_json_that_is_the_resumed_checkpoint_is_refused(checkpoint: Path):
    before = checkpoint.read_bytes()
    result = runner.invoke(app, ["train", "--resume", "ck.pth", "--json", "ck.pth"])
    assert result.exit_code == 2 and "--json ck.pth is also an input" in result.stderr
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["evaluate", "ck.pth", "-d", "demo", "--json", "adir"],
    ["cluster", "ck.pth", "-d", "demo", "--output", "adir"],
    ["export", "ck.pth", "-o", "afile/model.onnx"],
])
def test_an_output_that_is_a_folder_or_under_a_file_is_refused_first(checkpoint: Path, argv):
    (checkpoint.parent / "adir").mkdir()
    (checkpoint.parent / "afile").write_text("x")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "is a folder; give a file name" in result.stderr or "afile is a file, not a folder" in result.stderr


def test_an_unwritable_output_is_refused(tmp_path: Path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    with pytest.raises(DsglError, match=r"^--json .*ro/r\.json: no permission to write there$") as err:
        check_output(folder / "r.json", "--json")
    assert err.value.exit_code == 2
    with pytest.raises(DsglError, match=r"^--show-dir .*ro/lists: no permission to write there$"):
        check_output_dir(folder / "lists", "--show-dir")


@needs_permissions
def test_a_read_only_folder_is_refused(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(DsglError, match="no permission to write there"):
            check_output(folder / "r.json", "--json")
        with pytest.raises(DsglError, match="no permission to write there"):
            check_output_dir(folder / "lists", "--show-dir")
    finally:
        folder.chmod(0o755)


def test_output_folders(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DsglError, match=r"^--show-dir .*file is a file; give a folder$") as err:
        check_output_dir(tmp_path / "file", "--show-dir")
    assert err.value.exit_code == 2
    with pytest.raises(DsglError, match=r"^--show-dir .*file/lists: .*file is a file, not a folder$"):
        check_output_dir(tmp_path / "file" / "lists", "--show-dir")
    assert check_output_dir(tmp_path / "new" / "lists", "--show-dir") == tmp_path / "new" / "lists"
    assert check_output_dir(tmp_path, "--show-dir") == tmp_path and check_output_dir(None, "--show-dir") is None
    assert not (tmp_path / "new").exists()   # checking creates nothing


def test_write_json_leaves_nothing_behind_when_interrupted(tmp_path: Path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text('{"old": true}\n')

    def interrupted(self, text, encoding=None):
        Path.write_bytes(self, text.encode()[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(target, {"new": 1})
    monkeypatch.undo()
    assert target.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
