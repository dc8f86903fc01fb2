"""Batched feature extraction: eval mode, optional flip averaging, autocast on CUDA."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsgl_cli.data.loaders import extraction_loader


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when supported (fp16 otherwise); nothing on CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    paths: Sequence[str],
    transform: Callable,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 4,
    flip: bool = False,
    amp: bool = True,
    advance: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Unit-norm features (N x d, float32, on ``device``) of the images in ``paths``, in order."""
    was_training = model.training
    model.eval()
    loader = extraction_loader(paths, transform, batch_size, workers, device)
    chunks: list[torch.Tensor] = []
    try:
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp):
                feats = model(images).float()
                if flip:
                    feats = feats + model(torch.flip(images, dims=[3])).float()
            chunks.append(F.normalize(feats, dim=1))
            if advance is not None:
                advance(len(images))
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, 0, device=device)
    return torch.cat(chunks)
