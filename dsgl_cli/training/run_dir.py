"""The run directory: resolved config, log file, metrics.jsonl, checkpoints and curves; one live run per folder.

A run claims its folder when it starts (`claim_run_dir`), before any work: the folder is made if it
is missing and a lock (``fcntl.flock`` on ``.run.lock`` in it) is held until the run ends (the file
goes then) or its process dies. Taking the lock is the atomic step (two runs started together cannot
both get it), and the kernel drops it when the holder dies, SIGKILL included, so a folder left by a
dead run is never "held". So the same command started twice writes ``runs/demo`` and ``runs/demo-2``,
and a --logs-dir or --resume folder that a live run holds is refused with one line. Under the lock
the old rule holds: a folder with a run in it is only continued with --resume. The claim also
removes the checkpoint temporaries that killed runs left there (never a live writer's).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import yaml

from dsgl_cli.errors import DsglError, RaisedOnEveryRank, WriteFailed, os_error_message
from dsgl_cli.outputs import check_output_dir, same_path

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from dsgl_cli.training.distributed import Distributed

CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"
INIT = "model_init.pth"   # the model before training: the baseline to compare a trained one with
METRICS = "metrics.jsonl"
LOCK = ".run.lock"
#: how far `runs/<dataset>-N` is counted before the default folder gives up
MAX_NUMBERED = 999

#: the lock descriptors of the folders this process holds (closing one releases its lock)
_held: dict[Path, int] = {}
#: the folders a claim made (the run folder first, then the parents it made): a run that never started
#: leaves them empty, and its release removes them again
_made: dict[Path, list[Path]] = {}


def claim_run_dir(logs_dir: Optional[Path], dataset: str, resume: Optional[Path]) -> Path:
    """Where this run writes, made and held for the run (module doc); never one that holds another run."""
    if logs_dir is None and resume is not None:
        folder = resume if resume.is_dir() else resume.parent
        _hold(folder, f"--resume {resume}: its run folder {folder}", "stop it before resuming")
        return folder
    if logs_dir is not None:
        check_output_dir(logs_dir, "--logs-dir")
        _hold(logs_dir, f"--logs-dir {logs_dir}", "choose another --logs-dir")
        try:
            _check_free(logs_dir, resume)
        except DsglError:
            release_run_dir(logs_dir)
            raise
        return logs_dir
    base = Path("runs") / dataset
    for n in range(1, MAX_NUMBERED + 1):
        candidate = base if n == 1 else base.with_name(f"{dataset}-{n}")
        if candidate.exists() and not candidate.is_dir():
            continue
        if _hold(candidate, None, ""):
            if not ((candidate / CHECKPOINT).exists() or (candidate / METRICS).exists()):
                return candidate
            release_run_dir(candidate)
    raise DsglError(f"{base} to {base}-{MAX_NUMBERED} all hold runs; choose a folder with --logs-dir")


def _check_free(logs_dir: Path, resume: Optional[Path]) -> None:
    """An explicit --logs-dir that holds a run is only written by a resume of that same run."""
    if not (logs_dir / CHECKPOINT).exists():
        return
    if resume is None:
        raise DsglError(f"--logs-dir {logs_dir} already holds a run; continue it with --resume "
                        f"{logs_dir / CHECKPOINT} or choose another --logs-dir")
    own = resume if resume.is_dir() else resume.parent
    if not same_path(own, logs_dir):
        raise DsglError(f"--logs-dir {logs_dir} already holds another run; resume into the run's own folder "
                        f"{own} (leave out --logs-dir) or choose an empty --logs-dir")


def _hold(folder: Path, refused: Optional[str], instead: str) -> bool:
    """Make ``folder`` and take its lock. While a live run holds it: False where ``refused`` is None (the
    default folder moves on to the next), else a one-line error: '<refused> is in use ...; <instead>'."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            where = refused or f"the run folder {folder}"
            raise DsglError(f"{where}: cannot write there ({os_error_message(exc)}); choose a writable --logs-dir",
                            exit_code=2 if refused else 1) from None
        if not _lock(fd, folder):
            holder = _holder(fd)
            os.close(fd)
            if refused is None:
                return False
            raise DsglError(f"{refused} is in use by a dsgl run that is still going{holder}; wait for it to end "
                            f"or {instead}")
        if _still_there(fd, folder / LOCK):
            break
        os.close(fd)   # its holder ended and removed it after we opened it: lock the file there now
    try:   # who holds it, for the message another run gets; the lock itself does not depend on it
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    _held[folder] = fd
    if missing:
        _made[folder] = missing
    _remove_stale_temporaries(folder)
    return True


def _lock(fd: int, folder: Path) -> bool:
    """Take the folder's lock without waiting: False while another process holds it."""
    if sys.platform == "win32":   # no flock: the claim is unguarded there
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:   # a file system without locks (some network mounts)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        from dsgl_cli.console import warn

        warn(f"{folder} cannot be locked ({exc.strerror}); two runs started there at once would share it")
    return True


def _still_there(fd: int, path: Path) -> bool:
    """Whether the file ``fd`` locks is still the one at ``path`` (a run removes its lock file at the end)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """' (pid N)' as the lock file names the run holding it, or '' when it does not say."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})"


def release_run_dir(folder: Optional[Path] = None) -> None:
    """Let go of ``folder`` (all this process holds when None): the run ended. The lock file is removed
    while still locked, so a run that opened it meanwhile sees it gone and locks the new one instead; a
    killed run leaves it behind, unlocked (the kernel released it), and the next claim reuses it. Folders
    the claim made and nothing was written to (a run stopped before training: missing weights, bad
    data) are removed, so a failed start leaves no empty run folder behind."""
    for path in [folder] if folder is not None else list(_held):
        fd = _held.pop(path, None) if path is not None else None
        if fd is not None and path is not None:
            try:
                os.unlink(path / LOCK)
            except OSError:
                pass
            os.close(fd)
            for made in _made.pop(path, []):
                try:
                    made.rmdir()   # only an empty folder goes; the first that holds something stops it
                except OSError:
                    break


def claim_on_main(dist: "Distributed", logs_dir: Optional[Path], dataset: str, resume: Optional[Path]) -> Path:
    """Rank 0 claims the run folder; every rank gets its path, or the same one-line error (no rank waits)."""
    outcome: Any = None
    if dist.is_main:
        try:
            outcome = claim_run_dir(logs_dir, dataset, resume)
        except DsglError as exc:
            if not dist.active:
                raise
            outcome = exc
    outcome = dist.broadcast_object(outcome)
    if isinstance(outcome, DsglError):
        raise RaisedOnEveryRank(str(outcome), outcome.exit_code)
    return Path(outcome)


def _remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the checkpoint temporaries that killed runs left in ``folder``; the paths removed.

    Only save_checkpoint's exact names (`TEMPORARY`) for this folder's checkpoints, and only where the
    process that wrote one is gone: a live writer's temporary (another run, this process) stays.
    """
    from dsgl_cli.models.checkpoint import TEMPORARY

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.fullmatch(entry.name)
        if match is None or match["name"] not in (CHECKPOINT, BEST, INIT) or _process_alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:   # gone already, or not ours to delete: it stays
            pass
    return removed


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process here (unknown counts as alive, so nothing live is deleted)."""
    if pid == os.getpid() or sys.platform == "win32":   # os.kill(pid, 0) would interrupt it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. another user's process
        return True
    return True


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write of a run file is one line naming it (a write's OSError may not carry the path)."""
    try:
        yield
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {os_error_message(exc, paths=False)}") from exc


class RunDir:
    """Writes what a run leaves behind; only this class knows the file names."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            with _writing(self.path):
                self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def init(self) -> Path:
        return self.path / INIT

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    def save_checkpoint(self, payload: dict[str, Any], best: bool = False, init: bool = False) -> Path:
        """Write the last checkpoint (resumable), or the best or initial model (weights and settings only:
        `checkpoint.model_only`) atomically; only rank 0's run dir is enabled."""
        from dsgl_cli.models.checkpoint import model_only, save_checkpoint

        path = self.init if init else self.best if best else self.checkpoint
        if best or init:
            payload = model_only(payload)
        if self.enabled:
            try:
                save_checkpoint(path, payload)
            except WriteFailed as exc:
                if not self.checkpoint.exists():
                    raise
                raise WriteFailed(f"{exc}; once that is fixed, continue with: dsgl train --resume "
                                  f"{self.checkpoint}") from exc
        return path

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            path = self.path / "config.yaml"
            with _writing(path):
                path.write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, line: str) -> None:
        if self.enabled:
            path = self.path / "train.log"
            with _writing(path), open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with _writing(self.metrics_file), open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_epoch: int) -> None:
        """On resume, drop rows of epochs the resumed run will redo (atomically: a full disk keeps the rows)."""
        if not self.enabled or not self.metrics_file.exists():
            return
        keep = [r for r in self.read_metrics() if r.get("epoch", 0) <= after_epoch]
        tmp = self.path / f".{METRICS}.{os.getpid()}.tmp"
        try:
            with _writing(self.metrics_file):
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
                os.replace(tmp, self.metrics_file)
        finally:
            if tmp.exists():
                tmp.unlink()
