"""Suite-wide settings: never reach for the network, keep torch to the machine's cores."""

from __future__ import annotations

import pytest
import torch


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
