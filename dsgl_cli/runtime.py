"""Device resolution and seeding: the single place that decides where tensors live.

The device spelling is parsed here once (`parse_device`), for the config validator and for
`resolve_device`; torch is imported only when a device is actually resolved, so the command line
can validate flags without loading it.
"""

from __future__ import annotations

import os
import random
import re
from typing import TYPE_CHECKING

from dsgl_cli.errors import DsglError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def parse_device(spec: str | None) -> str:
    """``auto|cpu|cuda|cuda:N`` in canonical spelling (stripped, lower case); ValueError otherwise."""
    text = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(f"'{spec}' is not one of {DEVICE_CHOICES}")
    return text


def resolve_device(spec: str | None = "auto") -> "torch.device":
    """Turn ``auto|cpu|cuda|cuda:N`` into a torch.device, failing clearly when CUDA is absent."""
    import torch

    try:
        text = parse_device(spec)
    except ValueError as exc:
        raise DsglError(f"--device: {exc}", exit_code=2) from None
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DsglError(f"--device {text}: no CUDA GPU is visible to torch; use --device cpu or auto")
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DsglError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity where the platform says, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def default_workers(most: int = 4) -> int:
    """Data-loading processes by default: the reference's 4, but never more than the cores this process has
    (more makes torch's DataLoader warn on a 2-core machine, and only adds processes that wait)."""
    return min(most, usable_cpus())
