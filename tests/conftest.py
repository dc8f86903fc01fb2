"""Suite-wide settings and the one way to load test data.

Never reach for the network; keep torch to the machine's cores; the parity fixture of the authors'
code lives in tests/fixtures (``DSGL_STEP_FIXTURE`` names another copy). Reference implementations
are plain modules of this package: ``from tests import reference_step``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURE_ENV = "DSGL_STEP_FIXTURE"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dsgl_step_fixture.pt"


def step_fixture_path() -> Path:
    """The parity fixture: ``$DSGL_STEP_FIXTURE`` if set, else the copy in tests/fixtures."""
    return Path(os.environ.get(FIXTURE_ENV) or FIXTURE)


@pytest.fixture(scope="session")
def step_fixture() -> dict:
    """One iteration of the authors' DSGL code on small random inputs (tests/fixtures/README.md)."""
    path = step_fixture_path()
    if not path.is_file():
        pytest.fail(f"parity fixture missing at {path}; it ships in tests/fixtures (or set {FIXTURE_ENV})")
    return torch.load(path, weights_only=True)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretrained-weight lookups must never try a download during tests."""
    monkeypatch.setenv("DSGL_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for model-heavy modules: faster than two on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
