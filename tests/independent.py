"""An independent re-implementation of the authors' inference path, written from method.md 2-3.

It shares no code with dsgl_cli: torchvision's plain ResNet, GeM and the BN neck by hand,
PIL bicubic resizing and ImageNet normalisation in NumPy. Tests compare dsgl's evaluate and
export against it on authors'-format checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_STAGES = {"base.0.": "conv1.", "base.1.": "bn1.", "base.4.": "layer1.", "base.5.": "layer2.",
           "base.6.": "layer3.", "base.7.": "layer4."}


def authors_checkpoint(arch: str = "resnet18", seed: int = 0, with_gem: bool = True) -> dict:
    """A checkpoint in the authors' released format: DataParallel keys, random but non-trivial weights."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith("fc."):
            continue
        for ours, theirs in _STAGES.items():
            if key.startswith(theirs):
                key = ours + key[len(theirs):]
                break
        if key.endswith("running_var"):
            value = torch.rand_like(value) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            value = torch.randn_like(value) * 0.1
        state[key] = value
    dim = net.fc.in_features
    if with_gem:
        state["gap.p"] = torch.tensor([3.4])
    state["feat_bn.weight"] = torch.rand(dim) + 0.5
    state["feat_bn.bias"] = torch.zeros(dim)
    state["feat_bn.running_mean"] = torch.randn(dim) * 0.05
    state["feat_bn.running_var"] = torch.rand(dim) + 0.5
    state["feat_bn.num_batches_tracked"] = torch.tensor(7)
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 41, "best_mAP": 0.8123}


def preprocess(path: str, height: int, width: int) -> torch.Tensor:
    """PIL bicubic resize to (height, width), ImageNet normalisation, CHW float32."""
    img = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@torch.no_grad()
def forward(checkpoint: dict, images: torch.Tensor, arch: str = "resnet18") -> torch.Tensor:
    """Embeddings of the authors' model in eval mode: ResNet -> GeM/avg -> BN neck -> L2 normalise."""
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    net = getattr(torchvision.models, arch)()
    tv_state = {}
    for key, value in state.items():
        for ours, theirs in _STAGES.items():
            if key.startswith(ours):
                tv_state[theirs + key[len(ours):]] = value
    missing = net.load_state_dict(tv_state, strict=False).missing_keys
    assert all(k.startswith("fc.") for k in missing), missing
    if arch in ("resnet50", "resnet101", "resnet152"):
        net.layer4[0].conv2.stride = (1, 1)
        net.layer4[0].downsample[0].stride = (1, 1)
    net.eval()
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    if "gap.p" in state:
        p = float(state["gap.p"])
        x = x.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    else:
        x = x.mean(dim=(2, 3))
    x = (x - state["feat_bn.running_mean"]) / torch.sqrt(state["feat_bn.running_var"] + 1e-5)
    x = x * state["feat_bn.weight"] + state["feat_bn.bias"]
    return F.normalize(x, dim=1)
