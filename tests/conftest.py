"""Suite-wide settings: never reach for the network, keep torch to the machine's cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretrained-weight lookups must never try a download during tests."""
    monkeypatch.setenv("DSGL_OFFLINE", "1")
