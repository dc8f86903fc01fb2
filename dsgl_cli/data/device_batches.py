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

import numpy as np
import torch

from dsgl_cli.data.augment import ROLE_ANCHOR, ROLE_PARTNER, draw_batch_params
from dsgl_cli.data.batch_augment import PARAM_COLUMNS, BatchAugment, param_table
from dsgl_cli.data.image_cache import ImageCache
from dsgl_cli.data.sampler import IterationBatchSampler


def augments_on_device(choice: str, device: torch.device) -> bool:
    """``auto`` is the device path on CUDA and the loader path elsewhere."""
    return choice == "device" or (choice == "auto" and device.type == "cuda")


class DeviceBatches:
    """One epoch's (anchors, partners, anchor indices), as `loaders.train_loader` yields them.

    The whole epoch's plan (which rows, and every augmentation parameter of anchors and partners) is
    drawn on the host when iteration starts and reaches the device as one table: a step then only
    slices it, so no iteration waits on a host-to-device copy (issue 22).
    """

    #: columns of the epoch table: anchor row, partner row, then the anchor's and the partner's
    #: flip, crop top, crop left, erase, erase box (4)
    WIDTH = 2 + 2 * PARAM_COLUMNS

    def __init__(self, cache: ImageCache, augment: BatchAugment, seed: int, epoch: int,
                 batches: IterationBatchSampler, partners: bool, device: torch.device) -> None:
        self.cache, self.augment, self.seed, self.epoch = cache, augment, seed, epoch
        self.batches, self.partners, self.device = batches, partners, device

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_table(self) -> torch.Tensor:
        """(steps, local batch, `WIDTH`) int64 on the device: the epoch's rows and parameters."""
        batches = list(self.batches)
        if not batches:
            return torch.zeros((0, 0, self.WIDTH), dtype=torch.long, device=self.device)
        items = [it for batch in batches for it in batch]
        keys = np.array([(self.seed, self.epoch, it.iteration, it.position) for it in items], dtype=np.int64)
        h, w = self.augment.height, self.augment.width
        columns = [np.array([it.anchor for it in items]), np.array([it.partner for it in items]),
                   param_table(draw_batch_params(_with_role(keys, ROLE_ANCHOR), h, w))]
        if self.partners:
            columns.append(param_table(draw_batch_params(_with_role(keys, ROLE_PARTNER), h, w)))
        else:
            columns.append(np.zeros((len(items), PARAM_COLUMNS), dtype=np.int64))
        table = np.column_stack(columns).astype(np.int64).reshape(len(batches), -1, self.WIDTH)
        return torch.from_numpy(table).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        table = self.epoch_table()
        for step in range(table.shape[0]):
            rows = table[step]
            anchors = rows[:, 0]
            images = self.augment.train_table(self.cache.batch(anchors, self.device), rows[:, 2 : 2 + PARAM_COLUMNS])
            partners = (self.augment.train_table(self.cache.batch(rows[:, 1], self.device), rows[:, 2 + PARAM_COLUMNS:])
                        if self.partners else torch.empty(0))
            yield images, partners, anchors


def _with_role(keys: np.ndarray, role: int) -> np.ndarray:
    return np.column_stack([keys, np.full(len(keys), role, dtype=np.int64)])
