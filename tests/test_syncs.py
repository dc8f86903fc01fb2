"""A training iteration never waits for the host (issue 22): counted over real `dsgl train` runs.

The count is the difference between two runs that differ only in their iteration count, divided by
the difference in iterations: clustering, evaluation and start-up cancel out, what is left is the
steady-state iteration, data path (`--augment-on device`) included. On the CPU nothing actually
waits; `tests/dispatch_count.py` counts what would wait on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsgl_cli.cli import main
from tests.dispatch_count import Counts, count_syncs
from tests.helpers import make_market_like

COMMON = ["train", "-d", "folder", "-a", "resnet18", "--pretrained", "none", "--height", "32", "--width", "16",
          "-b", "8", "--num-instances", "2", "--epochs", "1", "--k1", "6", "--k2", "2", "--eps", "0.6",
          "--device", "cpu", "-j", "0", "--augment-on", "device", "--eval-step", "5", "--print-freq", "2"]


def _counted(data: Path, logs: Path, iters: int, *extra: str) -> Counts:
    with count_syncs() as counts:
        try:
            main([*COMMON, "--data-dir", str(data), "--logs-dir", str(logs), "--iters", str(iters), *extra])
        except SystemExit as exc:
            assert not exc.code, exc.code
    return counts


@pytest.mark.slow
def test_an_iteration_has_at_most_one_sync(tmp_path: Path) -> None:
    """Measured before issue 22 with this counter and these settings: 130 per iteration."""
    data = make_market_like(tmp_path / "data", train_ids=6, test_ids=2, cams=2, per_cam=2, colored=True)
    short = _counted(data, tmp_path / "short", 2)
    long = _counted(data, tmp_path / "long", 6)
    per_iteration = (long.total_syncs - short.total_syncs) / 4
    # --print-freq 2: one read of the loss sums every second step is 0.5 per iteration
    assert per_iteration <= 1, (long.syncs - short.syncs).most_common(10)
    assert long.dispatches > short.dispatches   # the counter saw the iterations at all
