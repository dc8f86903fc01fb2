"""Global pooling layers of method.md section 2: GeM with a learnable exponent, average, max."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsgl_cli.errors import check_choice
from dsgl_cli.models import POOLINGS


class GeneralizedMeanPooling(nn.Module):
    """GeM: ``(mean(x.clamp(eps)^p))^(1/p)`` over each channel map, p learnable (init 3), method.md 2.

    ``p`` is a 1-element parameter so the authors' ``gap.p`` key loads directly.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1)."""
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.data.item():.4f}, eps={self.eps}"


def build_pooling(name: str) -> nn.Module:
    """Pooling layer by name ('gem' | 'avg' | 'max'); output (B, C, 1, 1)."""
    name = check_choice(name, POOLINGS, "pooling")
    if name == "gem":
        return GeneralizedMeanPooling()
    if name == "avg":
        return nn.AdaptiveAvgPool2d(1)
    return nn.AdaptiveMaxPool2d(1)
