"""An epoch's training batches from images decoded once, augmented a whole batch at a time on the
training device (``--augment-on device``; the default on CUDA).

Why: the loader path decodes and augments image by image with PIL in worker processes, which at a
GPU's rate (thousands of images a second) needs more cores than a GPU host has to spare. Here the
train split is decoded once per run into a uint8 tensor (`image_cache`; Market-1501 at 128x64 is
318 MB) and each batch is resized, flipped, padded, cropped, normalised and erased by
`batch_augment.BatchAugment` with the parameters the loader path would draw for the same
(seed, epoch, iteration, position, role) keys: the same images in the same order, the same
choices, pixels within one grey level of Pillow's where a resize is needed and equal where none
is (tests/test_augment.py, tests/test_device_batches.py). The loader path stays the reference,
and the default on the CPU, where it is what the demo figures were measured with.
"""

from __future__ import annotations

from typing import Iterator

import torch

from dsgl_cli.data.augment import ROLE_ANCHOR, ROLE_PARTNER, draw_batch_params
from dsgl_cli.data.batch_augment import BatchAugment
from dsgl_cli.data.image_cache import ImageCache
from dsgl_cli.data.sampler import IterationBatchSampler


def augments_on_device(choice: str, device: torch.device) -> bool:
    """``auto`` is the device path on CUDA and the loader path elsewhere."""
    return choice == "device" or (choice == "auto" and device.type == "cuda")


class DeviceBatches:
    """One epoch's (anchors, partners, anchor indices), as `loaders.train_loader` yields them."""

    def __init__(self, cache: ImageCache, augment: BatchAugment, seed: int, epoch: int,
                 batches: IterationBatchSampler, partners: bool, device: torch.device) -> None:
        self.cache, self.augment, self.seed, self.epoch = cache, augment, seed, epoch
        self.batches, self.partners, self.device = batches, partners, device

    def __len__(self) -> int:
        return len(self.batches)

    def _augmented(self, rows: list[int], items: list, role: int) -> torch.Tensor:
        keys = [(self.seed, self.epoch, it.iteration, it.position, role) for it in items]
        params = draw_batch_params(keys, self.augment.height, self.augment.width)
        return self.augment.train(self.cache.batch(rows, self.device), params)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for items in self.batches:
            anchors = [it.anchor for it in items]
            images = self._augmented(anchors, items, ROLE_ANCHOR)
            partners = (self._augmented([it.partner for it in items], items, ROLE_PARTNER) if self.partners
                        else torch.empty(0))
            yield images, partners, torch.tensor(anchors, dtype=torch.long)
