"""Batched feature extraction (method.md 4.1), and the one place that decides the precision of a run (3.2)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsgl_cli.data.loaders import checked, extraction_loader


def precision_of(device: torch.device, amp: bool) -> str:
    """'float32' (the reference's), or with --amp on CUDA 'bf16', or 'fp16' where bf16 is missing."""
    if not amp or device.type != "cuda":
        return "float32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast_context(device: torch.device, amp: bool) -> ContextManager:
    """The autocast of `precision_of` (nothing for float32)."""
    precision = precision_of(device, amp)
    if precision == "float32":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_model_layout(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device``, in channels_last when asked on CUDA (a speed setting only)."""
    images = images.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def extract_features(
    model: nn.Module,
    paths: Sequence[str],
    transform: Callable,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 4,
    flip: bool = False,
    amp: bool = False,
    advance: Optional[Callable[[int], None]] = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Unit-norm features (N x d, float32, on ``device``) of the images in ``paths``, in order."""
    with checked(extraction_loader(paths, transform, batch_size, workers, device)) as batches:
        return encode_batches(model, (images for images, _ in batches), device, flip=flip, amp=amp,
                              advance=advance, channels_last=channels_last)


@torch.no_grad()
def encode_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    flip: bool = False,
    amp: bool = False,
    advance: Optional[Callable[[int], None]] = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Unit-norm features of batches of model inputs (from a loader, or decoded images augmented on
    the device), in order; the model in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        for images in batches:
            images = to_model_layout(images, device, channels_last)
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


def encode_cached(model: nn.Module, cache: Any, augment: Any, device: torch.device,
                  rows: Optional[Sequence[int]] = None, batch_size: int = 128, **options: Any) -> torch.Tensor:
    """Features of images decoded once (`data.image_cache.ImageCache`; all, or the contiguous range
    `rows`), resized and normalised on the device by `augment.test` (`data.batch_augment.BatchAugment`);
    `options` go to `encode_batches`. The row numbers are made on the cache's device: no upload."""
    span = range(len(cache)) if rows is None else rows
    start, stop = (span[0], span[-1] + 1) if len(span) else (0, 0)
    index = torch.arange(start, stop, device=cache.images.device)
    batches = (augment.test(cache.batch(index[i:i + batch_size], device)) for i in range(0, len(index), batch_size))
    return encode_batches(model, batches, device, **options)
