"""One live run per folder: the claim is atomic, a live run's folder is refused with one line, a dead run's is
not held, the old rules hold under the lock; writers killed mid-write (SIGTERM, SIGKILL) leave nothing the next
start does not remove; a run folder's writes, a full disk included, fail with one line naming the file."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli import outputs
from dsgl_cli.cli import app
from dsgl_cli.errors import DsglError, RaisedOnEveryRank, WriteFailed
from dsgl_cli.models.checkpoint import load_checkpoint  # before forking: the claim's sweep imports it
from dsgl_cli.training import run_dir as R
from dsgl_cli.training.run_dir import RunDir, claim_on_main, claim_run_dir, release_run_dir
from tests.helpers import make_market_like

runner = CliRunner()
fork = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def _release():
    yield
    release_run_dir()


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _claimer(cwd: str, logs_dir, start, results, hold) -> None:
    """A run starting: claim, report, keep the folder until told to end."""
    os.chdir(cwd)
    start.wait()
    try:
        results.put(("claimed", str(claim_run_dir(logs_dir, "demo", None))))
    except DsglError as exc:
        results.put(("refused", str(exc)))
    hold.wait(60)


def _race(cwd: Path, logs_dir, n: int = 2) -> list[tuple[str, str]]:
    start, hold, results = fork.Barrier(n), fork.Event(), fork.Queue()
    procs = [fork.Process(target=_claimer, args=(str(cwd), logs_dir, start, results, hold)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        return sorted(results.get(timeout=60) for _ in procs)
    finally:
        hold.set()
        for p in procs:
            p.join(30)


def _holder(folder: Path):
    """A live run holding ``folder`` in another process (a child that claimed it and waits)."""
    start, hold, results = fork.Barrier(1), fork.Event(), fork.Queue()
    proc = fork.Process(target=_claimer, args=(str(Path.cwd()), folder, start, results, hold))
    proc.start()
    assert results.get(timeout=60) == ("claimed", str(folder))
    return proc, hold


# ----------------------------------------------------------------------------- racing
@pytest.mark.parametrize("round_", range(8))
def test_two_runs_started_together_get_two_folders(cwd: Path, round_):
    assert _race(cwd, None) == [("claimed", "runs/demo"), ("claimed", "runs/demo-2")]


@pytest.mark.parametrize("round_", range(8))
def test_two_runs_racing_for_one_logs_dir_one_wins(cwd: Path, round_):
    outcome = _race(cwd, cwd / "one-folder")
    assert [kind for kind, _ in outcome] == ["claimed", "refused"]
    # the pid is named once the winner has written it into the lock file (a moment after it took the lock)
    assert re.fullmatch(rf"--logs-dir {re.escape(str(cwd / 'one-folder'))} is in use by a dsgl run that is still going"
                        r"( \(pid \d+\))?; wait for it to end or choose another --logs-dir", outcome[1][1])


def test_the_same_process_claiming_twice_gets_two_folders(cwd: Path):
    assert claim_run_dir(None, "demo", None) == Path("runs/demo")
    assert claim_run_dir(None, "demo", None) == Path("runs/demo-2")
    release_run_dir()
    assert claim_run_dir(None, "demo", None) == Path("runs/demo")   # empty and free again: reused


def test_a_run_that_ends_removes_its_lock_and_a_late_opener_locks_the_new_file(cwd: Path):
    import fcntl

    folder = claim_run_dir(cwd / "run", "demo", None)
    late = os.open(folder / R.LOCK, os.O_RDWR)   # a second run opened the lock file just before the end
    release_run_dir()
    assert not folder.exists()   # the claim made it and nothing was written there: it goes with the lock
    fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)   # it gets the lock of a file that is gone ...
    assert not R._still_there(late, folder / R.LOCK)   # ... which the claim sees, so it locks the new one
    assert claim_run_dir(folder, "demo", None) == folder and R._still_there(R._held[folder], folder / R.LOCK)
    os.close(late)


# ----------------------------------------------------------------------------- live, dead, rules
def test_a_live_runs_folder_is_refused_a_dead_ones_is_not(cwd: Path):
    folder = cwd / "run"
    proc, hold = _holder(folder)
    try:
        with pytest.raises(DsglError) as err:
            claim_run_dir(folder, "demo", None)
        assert str(err.value) == (f"--logs-dir {folder} is in use by a dsgl run that is still going (pid {proc.pid}); "
                                  "wait for it to end or choose another --logs-dir")
        (folder / R.CHECKPOINT).write_bytes(b"x")
        with pytest.raises(DsglError, match=rf"^--resume {folder}: its run folder {folder} is in use .*pid "
                                            rf"{proc.pid}\); wait for it to end or stop it before resuming$"):
            claim_run_dir(None, "demo", folder)
        assert claim_run_dir(None, "demo", None) == Path("runs/demo")   # the default folder is elsewhere
    finally:
        os.kill(proc.pid, signal.SIGKILL)   # the run dies without a word: its lock goes with it
        proc.join(30)
    assert claim_run_dir(None, "demo", folder / R.CHECKPOINT) == folder


def test_the_old_rules_hold(cwd: Path):
    done = cwd / "done"
    done.mkdir()
    (done / R.CHECKPOINT).write_bytes(b"x")
    with pytest.raises(DsglError, match=rf"^--logs-dir {done} already holds a run; continue it with --resume "
                                        rf"{done / R.CHECKPOINT} or choose another --logs-dir$"):
        claim_run_dir(done, "demo", None)
    other = cwd / "other"
    other.mkdir()
    (other / R.CHECKPOINT).write_bytes(b"y")
    with pytest.raises(DsglError, match=rf"^--logs-dir {done} already holds another run; resume into the run's own"):
        claim_run_dir(done, "demo", other / R.CHECKPOINT)
    assert claim_run_dir(done, "demo", done / R.CHECKPOINT) == done
    assert claim_run_dir(cwd / "fresh", "demo", other / R.CHECKPOINT) == cwd / "fresh"
    for name in ("demo", "demo-2"):
        Path("runs", name).mkdir(parents=True)
    (Path("runs/demo") / R.METRICS).write_text("{}\n")
    (Path("runs/demo-2") / R.CHECKPOINT).write_bytes(b"x")
    Path("runs/demo-3").write_text("a file")
    assert claim_run_dir(None, "demo", None) == Path("runs/demo-4")
    assert (done / R.LOCK).read_text() == f"{os.getpid()}\n"


def test_folders_that_cannot_be_runs_are_one_line(cwd: Path, monkeypatch):
    (cwd / "afile").write_text("x")
    for logs, message in ((cwd / "afile", f"--logs-dir {cwd / 'afile'} is a file; give a folder"),
                          (cwd / "afile" / "run", f"--logs-dir {cwd / 'afile' / 'run'}: {cwd / 'afile'} is a file, "
                                                  "not a folder")):
        with pytest.raises(DsglError) as err:
            claim_run_dir(logs, "demo", None)
        assert (str(err.value), err.value.exit_code) == (message, 2)
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda p, m: False if Path(p) == cwd else real_access(p, m))
    with pytest.raises(DsglError, match=r"^--logs-dir .*ro: no permission to write there$"):
        claim_run_dir(cwd / "ro", "demo", None)
    monkeypatch.undo()
    real_open = os.open

    def read_only(name, *args, **kwargs):
        if str(name).endswith(R.LOCK):
            raise OSError(errno.EROFS, "Read-only file system", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(R.os, "open", read_only)
    with pytest.raises(DsglError) as err:
        claim_run_dir(cwd / "rofs", "demo", None)
    assert str(err.value) == (f"--logs-dir {cwd / 'rofs'}: cannot write there ({cwd / 'rofs' / R.LOCK}: Read-only "
                              "file system; write to a writable disk); choose a writable --logs-dir")
    with pytest.raises(DsglError, match="^the run folder runs/demo: cannot write there"):
        claim_run_dir(None, "demo", None)


def test_every_rank_gets_the_claim_or_the_same_error(cwd: Path):
    (cwd / "afile").write_text("x")
    main = SimpleNamespace(is_main=True, active=True, broadcast_object=lambda obj: obj)
    with pytest.raises(RaisedOnEveryRank, match="is a file") as err:
        claim_on_main(main, cwd / "afile", "demo", None)
    assert err.value.exit_code == 2
    other = SimpleNamespace(is_main=False, active=True, broadcast_object=lambda obj: DsglError("taken", 1))
    with pytest.raises(RaisedOnEveryRank, match="^taken$"):
        claim_on_main(other, None, "demo", None)
    single = SimpleNamespace(is_main=True, active=False, broadcast_object=lambda obj: obj)
    assert claim_on_main(single, None, "demo", None) == Path("runs/demo")


# ----------------------------------------------------------------------------- writers killed mid-write
def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


_CHILD = """
import sys, time
from pathlib import Path
import torch
from dsgl_cli.models import checkpoint as C
folder, mode = Path(sys.argv[1]), sys.argv[2]
C.save_checkpoint(folder / "checkpoint.pth", {"state_dict": {"w": torch.zeros(4)}, "epoch": 1})
if mode == "sigterm":
    real = torch.save
    def slow(obj, f, *a, **k):
        real(obj, f, *a, **k)
        (folder / "writing").touch()
        time.sleep(3)           # still inside the write: the signal lands here
    C.torch.save = slow
    C.save_checkpoint(folder / "checkpoint.pth", {"state_dict": {"w": torch.ones(4)}, "epoch": 2})
    print("not reached: SIGTERM's default ends the process after the write")
else:
    big = torch.zeros(48_000_000)   # 192 MB, about the size of a ResNet-50 run's checkpoint
    for epoch in range(2, 10_000):
        C.save_checkpoint(folder / "checkpoint.pth", {"state_dict": {"w": big}, "epoch": epoch})
"""


def _child(folder: Path, mode: str):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(folder), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.002)


@pytest.mark.slow
def test_sigterm_to_a_writing_process_leaves_a_complete_checkpoint_and_no_temporary(tmp_path):
    proc = _child(tmp_path, "sigterm")
    _wait_for(lambda: (tmp_path / "writing").exists() or proc.poll() is not None)
    assert len(_temporaries(tmp_path)) == 1, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM and "not reached" not in out, err
    assert _temporaries(tmp_path) == [] and load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 2


def _big_temporary(folder: Path) -> bool:
    for name in _temporaries(folder):
        try:
            if (folder / name).stat().st_size > 1_000_000:
                return True
        except FileNotFoundError:   # renamed into place meanwhile
            pass
    return False


@pytest.mark.slow
def test_sigkill_mid_write_leaks_a_temporary_the_next_run_removes(tmp_path):

    for attempt in range(5):   # the kill must land while a temporary exists: retry the rare miss
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        proc = _child(folder, "sigkill")

        _wait_for(lambda folder=folder, proc=proc: _big_temporary(folder) or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)   # reaped: its pid is no longer alive
        leaked = _temporaries(folder)
        if leaked:
            break
    assert proc.returncode == -signal.SIGKILL
    assert leaked == [f".checkpoint.pth.{proc.pid}.{leaked[0].split('.')[-2]}.tmp"]
    assert (folder / leaked[0]).stat().st_size > 1_000_000
    assert load_checkpoint(folder / "checkpoint.pth")["epoch"] >= 1   # the last complete checkpoint is intact

    live = subprocess.Popen(["sleep", "60"])
    try:   # a concurrent writer's temporaries (a live process, this one) and other names stay
        keep = [f".checkpoint.pth.{live.pid}.0123abcd.tmp", f".model_best.pth.{os.getpid()}.89abcdef.tmp",
                f".other.pth.{proc.pid}.0123abcd.tmp", f".checkpoint.pth.{proc.pid}.tmp", "notes.tmp"]
        for name in keep:
            (folder / name).write_bytes(b"partial")
        (folder / f".model_best.pth.{proc.pid}.fedcba98.tmp").write_bytes(b"partial")
        assert claim_run_dir(None, "unused", folder / "checkpoint.pth") == folder   # the next start, resuming
        release_run_dir()
        assert _temporaries(folder) == sorted(keep)
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- the run folder's writes
def test_run_files_that_cannot_be_written_are_one_line(tmp_path: Path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.append_metrics({"epoch": 0, "mAP": 0.1})
    run.append_metrics({"epoch": 1, "mAP": 0.2})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteFailed, match=rf"^cannot write {run.metrics_file}: No space left on device; free"):
        run.truncate_metrics(0)
    with pytest.raises(WriteFailed, match=rf"^cannot write {run.path / 'config.yaml'}: No space left"):
        run.write_config({"a": 1})
    monkeypatch.undo()
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]   # the rows survive a failed rewrite
    run.truncate_metrics(0)
    assert [r["epoch"] for r in run.read_metrics()] == [0] and sorted(os.listdir(run.path)) == [R.METRICS]


# ----------------------------------------------------------------------------- the command line
TINY = ["-d", "folder", "-a", "resnet18", "--pretrained", "none", "--height", "32", "--width", "16",
        "-b", "8", "--num-instances", "4", "--iters", "2", "--k1", "6", "--k2", "2", "--eps", "0.6",
        "-j", "0", "--device", "cpu"]


@pytest.fixture
def no_work(monkeypatch):
    from dsgl_cli.data import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the run folder was claimed")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_train_refuses_a_taken_or_impossible_logs_dir_before_any_work(cwd: Path, no_work):
    (cwd / "afile").write_text("x")
    result = runner.invoke(app, ["train", *TINY, "--logs-dir", "afile"])
    assert result.exit_code == 2 and result.stderr.splitlines() == ["error: --logs-dir afile is a file; give a folder"]
    proc, hold = _holder(cwd / "busy")
    try:
        result = runner.invoke(app, ["train", *TINY, "--logs-dir", str(cwd / "busy")])
    finally:
        hold.set()
        proc.join(30)
    assert result.exit_code == 1 and result.stderr.splitlines() == [
        f"error: --logs-dir {cwd / 'busy'} is in use by a dsgl run that is still going (pid {proc.pid}); "
        "wait for it to end or choose another --logs-dir"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_market_like(root, train_ids=8, test_ids=4, cams=3, per_cam=2, size=(32, 16), colored=True)
    return root


@pytest.mark.slow
def test_the_same_train_command_twice_at_once_writes_two_run_folders(tiny_data: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dsgl_cli", "train", *TINY, "--data-dir", str(tiny_data), "--epochs", "1"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs_ = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs_
    named = sorted(line.split()[-1] for out, _ in outputs_ for line in out.splitlines() if line.startswith(" run dir"))
    assert named == ["runs/folder", "runs/folder-2"]
    for folder in named:
        rows = [json.loads(line) for line in (tmp_path / folder / R.METRICS).read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1]   # one run's rows each, nothing interleaved


@pytest.mark.slow
def test_a_disk_that_fills_during_a_checkpoint_write_stops_the_run_with_one_line(tiny_data: Path, tmp_path: Path,
                                                                                  monkeypatch):
    from dsgl_cli.models import checkpoint as C

    real_save, calls = torch.save, []

    def fills_on_the_second_checkpoint(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:   # epoch 1's checkpoint.pth; the model before training's and model_init.pth are written
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(C.torch, "save", fills_on_the_second_checkpoint)
    logs = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--data-dir", str(tiny_data), "--logs-dir", str(logs),
                                 "--epochs", "2"])
    assert result.exit_code == 1, result.output
    ckpt = logs / R.CHECKPOINT
    assert result.stderr.splitlines() == [
        f"error: cannot write checkpoint {ckpt}: No space left on device; free some space or write to another disk; "
        f"the previous checkpoint there is intact; once that is fixed, continue with: dsgl train --resume {ckpt}"]
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert not [p for p in logs.iterdir() if p.name.endswith(".tmp")]


def test_a_release_removes_only_the_empty_folders_its_claim_made(cwd: Path):
    made = claim_run_dir(cwd / "runs" / "site", "demo", None)   # a run that never started: missing weights
    release_run_dir()
    assert not (cwd / "runs").exists()
    kept = claim_run_dir(cwd / "runs" / "site", "demo", None)
    (kept / "config.yaml").write_text("x")                      # a run that started
    release_run_dir()
    assert sorted(os.listdir(kept)) == ["config.yaml"]
    empty = cwd / "mine"
    empty.mkdir()
    release_run_dir(claim_run_dir(empty, "demo", None))          # the user's own folder stays
    assert empty.is_dir() and made == kept
