"""ResNet backbones of method.md section 2 (torchvision ResNet-18..152, IBN-ResNet-50a/101a), last stride 1.

Also the reverse direction: guess which of these architectures a state dict belongs to, so a
checkpoint that does not fit can name the one it probably needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Callable

import torch
from torchvision import models as tvm
from torchvision.models.resnet import ResNet

from dsgl_cli.errors import check_choice
from dsgl_cli.models import ARCHITECTURES
from dsgl_cli.models.ibn import convert_to_ibn_a

# name -> (torchvision constructor, IBN-a?)
_FACTORY: dict[str, tuple[Callable[..., ResNet], bool]] = {
    "resnet18": (tvm.resnet18, False),
    "resnet34": (tvm.resnet34, False),
    "resnet50": (tvm.resnet50, False),
    "resnet101": (tvm.resnet101, False),
    "resnet152": (tvm.resnet152, False),
    "resnet_ibn50a": (tvm.resnet50, True),
    "resnet_ibn101a": (tvm.resnet101, True),
}
assert tuple(_FACTORY) == ARCHITECTURES, "the factory implements exactly the listed architectures"

# (bottleneck?, IBN?, blocks per stage) -> architecture name
_LAYOUTS: dict[tuple[bool, bool, tuple[int, ...]], str] = {
    (False, False, (2, 2, 2, 2)): "resnet18",
    (False, False, (3, 4, 6, 3)): "resnet34",
    (True, False, (3, 4, 6, 3)): "resnet50",
    (True, False, (3, 4, 23, 3)): "resnet101",
    (True, False, (3, 8, 36, 3)): "resnet152",
    (True, True, (3, 4, 6, 3)): "resnet_ibn50a",
    (True, True, (3, 4, 23, 3)): "resnet_ibn101a",
}

# Position of each torchvision stem/stage module inside ReIDModel.base (nn.Sequential).
BASE_INDEX: dict[str, int] = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
_INDEX_NAME = {v: k for k, v in BASE_INDEX.items()}


def build_backbone(arch: str) -> ResNet:
    """Randomly initialised torchvision ResNet (IBN-a where asked) with last stride 1 for depth >= 50."""
    arch = check_choice(arch, ARCHITECTURES, "architecture")
    factory, ibn = _FACTORY[arch]
    resnet = factory(weights=None)
    if ibn:
        convert_to_ibn_a(resnet)
    if isinstance(resnet.layer4[0], tvm.resnet.Bottleneck):
        # method.md 2: stride 1 in the last stage keeps a 16x8 map for 256x128 inputs.
        resnet.layer4[0].conv2.stride = (1, 1)
        resnet.layer4[0].downsample[0].stride = (1, 1)
    return resnet


def backbone_dim(resnet: ResNet) -> int:
    """Channels of the last stage (512 for ResNet-18/34, 2048 from ResNet-50 on)."""
    return resnet.fc.in_features


def to_torchvision_key(key: str) -> str:
    """``base.4.0.conv1.weight`` -> ``layer1.0.conv1.weight``; other keys unchanged."""
    match = re.match(r"^base\.(\d+)\.(.*)$", key)
    if match and int(match.group(1)) in _INDEX_NAME:
        return f"{_INDEX_NAME[int(match.group(1))]}.{match.group(2)}"
    return key


def to_base_key(key: str) -> str | None:
    """``layer1.0.conv1.weight`` -> ``base.4.0.conv1.weight``; None for keys outside the backbone (fc.*)."""
    head, _, rest = key.partition(".")
    if head in BASE_INDEX and rest:
        return f"base.{BASE_INDEX[head]}.{rest}"
    if head == "base":
        return key
    return None


def infer_architecture(keys: Iterable[str] | Mapping[str, torch.Tensor]) -> str | None:
    """Guess the architecture from key patterns: blocks per stage, bottleneck vs basic, IBN ``IN`` keys."""
    names = [to_torchvision_key(k[7:] if k.startswith("module.") else k) for k in keys]
    blocks: list[int] = []
    for stage in range(1, 5):
        indices = {
            int(m.group(1)) for n in names if (m := re.match(rf"^layer{stage}\.(\d+)\.", n)) is not None
        }
        blocks.append(max(indices) + 1 if indices else 0)
    bottleneck = any(re.match(r"^layer\d\.\d+\.conv3\.weight$", n) for n in names)
    ibn = any(re.match(r"^layer\d\.\d+\.bn1\.IN\.weight$", n) for n in names)
    return _LAYOUTS.get((bottleneck, ibn, tuple(blocks)))
