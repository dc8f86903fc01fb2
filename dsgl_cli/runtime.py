"""Device resolution and seeding: the single place that decides where tensors live."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import torch

from dsgl_cli.errors import DsglError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a torch.device, failing clearly when CUDA is absent."""
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise DsglError(f"--device: '{spec}' is not one of auto, cpu, cuda, cuda:N", exit_code=2)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DsglError(f"--device {spec}: no CUDA GPU is visible to torch; use --device cpu or auto")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DsglError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
