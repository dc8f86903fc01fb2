"""The re-identification model of method.md section 2: backbone, pooling, neck, L2-normalised embedding.

Module names follow the authors' layout (``base.*``, ``gap.p``, ``feat.*``, ``feat_bn.*``) so
their state dicts load directly once DataParallel's ``module.`` prefix is stripped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.models import ARCHITECTURES, POOLINGS
from dsgl_cli.models.backbones import backbone_dim, build_backbone
from dsgl_cli.models.pooling import build_pooling
from dsgl_cli.models.weights import LoadReport, load_pretrained


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model (stored in checkpoints); ``out_dim`` is the embedding size."""

    arch: str
    pooling: str
    features: int
    dropout: float
    out_dim: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (weights_only-safe) for checkpoints and JSON."""
        return asdict(self)


class ReIDModel(nn.Module):
    """ResNet -> pooling -> [Linear] -> BatchNorm1d (frozen bias) -> L2 normalise -> [dropout in train]."""

    def __init__(self, arch: str, pooling: str = "gem", features: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        resnet = build_backbone(arch)
        self.base = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )
        self.gap = build_pooling(pooling)
        in_dim = backbone_dim(resnet)
        if features > 0:
            self.feat = nn.Linear(in_dim, features)
            init.kaiming_normal_(self.feat.weight, mode="fan_out")
            init.constant_(self.feat.bias, 0.0)
        out_dim = features if features > 0 else in_dim
        self.feat_bn = nn.BatchNorm1d(out_dim)
        init.constant_(self.feat_bn.weight, 1.0)
        init.constant_(self.feat_bn.bias, 0.0)
        self.feat_bn.bias.requires_grad_(False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.init_report: LoadReport | None = None  # set by build_model when weights were loaded
        self.spec = ModelSpec(arch=arch, pooling=pooling, features=int(features), dropout=float(dropout),
                              out_dim=out_dim)

    @property
    def out_dim(self) -> int:
        """Embedding size d (2048 for ResNet-50 without an embedding layer)."""
        return self.spec.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unit-norm embeddings (B, d) in train and eval mode (method.md 2).

        As in the reference, dropout (train mode only) acts after the normalisation.
        """
        x = self.gap(self.base(x)).flatten(1)
        if hasattr(self, "feat"):
            x = self.feat(x)
        x = F.normalize(self.feat_bn(x), dim=1)
        if self.drop is not None and self.training:
            x = self.drop(x)
        return x


def build_model(
    arch: str,
    pooling: str = "gem",
    features: int = 0,
    dropout: float = 0.0,
    pretrained: str = "none",
) -> ReIDModel:
    """Typed model factory; ``pretrained`` is 'imagenet', 'none' or a weights file (see models.weights)."""
    arch = check_choice(arch, ARCHITECTURES, "architecture")
    pooling = check_choice(pooling, POOLINGS, "pooling")
    if isinstance(features, bool) or not isinstance(features, int) or features < 0:
        raise DsglError(f"--features must be an integer >= 0 (0 = no embedding layer), got {features!r}",
                        exit_code=2)
    if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0) or math.isnan(float(dropout)):
        raise DsglError(f"--dropout must be in [0, 1), got {dropout!r}", exit_code=2)
    model = ReIDModel(arch, pooling=pooling, features=features, dropout=float(dropout))
    source = str(pretrained).strip()
    if source.lower() != "none":
        model.init_report = load_pretrained(model, arch, source)
    return model
