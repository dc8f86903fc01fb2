"""Ctrl-C and SIGTERM at any moment of a real `dsgl train`, then --resume: the uninterrupted run's result.

Each trial signals the process at a random time (during start-up, a loader's start, a step, the
evaluation...), checks that it ended with one line and the interrupt's exit code, resumes it, and
compares the final weights with those of the same command run without interruption, bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import make_market_like

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "-d", "folder", "-a", "resnet18", "--pretrained", "none", "--height", "32", "--width", "16",
        "-b", "8", "--num-instances", "2", "--iters", "3", "--epochs", "3", "--k1", "6", "--k2", "2",
        "--eps", "0.6", "-j", "2", "--device", "cpu"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "DSGL_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, float]:
    """The data, the uninterrupted run's final weights and how long that run took."""
    root = tmp_path_factory.mktemp("interrupts")
    data = make_market_like(root / "data", train_ids=8, test_ids=3, cams=3, per_cam=2, size=(32, 16), colored=True)
    t0 = time.monotonic()
    done = subprocess.run(_command(data, root / "full"), cwd=root, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return data, _weights(root / "full"), time.monotonic() - t0


def _command(data: Path, logs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dsgl_cli", *ARGS, "--data-dir", str(data), "--logs-dir", str(logs), *extra]


def _weights(logs: Path) -> dict:
    return torch.load(logs / "checkpoint.pth", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("trial, signals", [(0, [signal.SIGINT]), (1, [signal.SIGINT]),
                                            (2, [signal.SIGINT, signal.SIGINT]), (3, [signal.SIGTERM])])
def test_a_signal_at_a_random_moment_then_resume_gives_the_uninterrupted_run(reference, tmp_path, trial, signals):
    data, expected, duration = reference
    logs = tmp_path / "run"
    proc = subprocess.Popen(_command(data, logs), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    moment = random.Random(trial).uniform(0.15, 0.95)   # 0.83, 0.26, 0.92, 0.34 of the run for trials 0-3
    time.sleep(moment * duration)
    for signum in signals:
        proc.send_signal(signum)
        time.sleep(0.2)
    try:
        out, err = proc.communicate(timeout=max(120.0, 4 * duration))
    except subprocess.TimeoutExpired:   # a process that never ends after a signal is the bug this looks for
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not end after {signals}: {err[-1500:]}")
    if proc.returncode == 0:   # the signal came after the run's work had ended: nothing to resume
        assert moment > 0.5, f"a signal {moment:.2f} of the way through the run was ignored"
        assert all(torch.equal(v, expected[k]) for k, v in _weights(logs).items())
        return
    assert proc.returncode == 128 + signals[0], (out[-1500:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0], err[-2000:]
    if "before anything was trained" in errors[0] or "while starting" in errors[0]:   # nothing to resume: run again
        resumed = subprocess.run(_command(data, tmp_path / "again"), cwd=tmp_path, env=ENV, capture_output=True,
                                 text=True, timeout=600)
        logs = tmp_path / "again"
    else:
        assert "--resume" in errors[0]
        resumed = subprocess.run([sys.executable, "-m", "dsgl_cli", "train", "--resume", str(logs / "checkpoint.pth"),
                                  "--data-dir", str(data)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                 timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = _weights(logs)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "the resumed run differs from the uninterrupted one"
