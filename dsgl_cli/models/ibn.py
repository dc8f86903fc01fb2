"""IBN-a: instance norm on half the channels of the first BN of each bottleneck in layer1-3 (Pan et al. 2018).

Module names follow IBN-Net (``bn1.IN.*``, ``bn1.BN.*``) so ``resnet50_ibn_a.pth.tar``-style
ImageNet state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet


class IBN(nn.Module):
    """Instance norm (affine) on the first ``int(planes * ratio)`` channels, batch norm on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.instance_channels = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.instance_channels, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.instance_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the two channel groups separately and concatenate them back."""
        k = self.instance_channels
        first, second = torch.split(x, [k, x.shape[1] - k], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


def convert_to_ibn_a(resnet: ResNet) -> ResNet:
    """Replace ``bn1`` of every bottleneck in layer1-3 by an IBN layer, in place (layer4 keeps BN)."""
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3):
        for block in layer:
            if not isinstance(block, Bottleneck):
                raise TypeError("IBN-a is defined for bottleneck ResNets (depth >= 50)")
            block.bn1 = IBN(block.bn1.num_features)
    return resnet
