"""--augment-on device against the loader path it replaces: the same batches, images and draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsgl_cli.data.augment import KeyedTrainAugment
from dsgl_cli.data.batch_augment import BatchAugment
from dsgl_cli.data.device_batches import DeviceBatches, augments_on_device
from dsgl_cli.data.image_cache import decode_images
from dsgl_cli.data.loaders import checked, train_loader
from dsgl_cli.data.sampler import IterationBatchSampler, PseudoIdentitySampler
from dsgl_cli.data.transforms import IMAGENET_STD
from tests.helpers import write_image

H, W, SEED, EPOCH = 64, 32, 5, 2
# one grey level (Pillow's and the batch resize may round a pixel differently, tests/test_augment.py)
# plus the float32 error of normalising: |v| < 3, eps 1.2e-7, times 255 / std < 1200 -> < 1e-3
GREY_TOL = 1 + 1e-3


def _paths(tmp_path, size: tuple[int, int], n: int = 24) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"{i:03d}.jpg"
        write_image(path, seed=i, size=size)
        paths.append(str(path))
    return paths


def _batches(n: int, start: int = 0) -> IterationBatchSampler:
    labels = np.arange(n) % 4
    labels[:2] = -1   # two outliers, which the sampler leaves out
    sampler = PseudoIdentitySampler(labels, np.arange(n) % 3, 2)
    return IterationBatchSampler(sampler, 8, 4, SEED, EPOCH, start=start)


def _both(paths: list[str], start: int = 0) -> tuple[list, list]:
    with checked(train_loader(paths, KeyedTrainAugment(H, W, SEED), EPOCH, _batches(len(paths), start), 0,
                              torch.device("cpu"), partners=True)) as loaded:
        pil = list(loaded)
    device = list(DeviceBatches(decode_images(paths, H, W), BatchAugment(H, W), SEED, EPOCH,
                                _batches(len(paths), start), True, torch.device("cpu")))
    return pil, device


def test_without_a_resize_the_device_path_is_the_loader_path_exactly(tmp_path):
    pil, device = _both(_paths(tmp_path, (H, W)))
    assert len(pil) == len(device) == 4
    for (a, pa, ia), (b, pb, ib) in zip(pil, device):
        assert torch.equal(ia, ib) and torch.equal(a, b) and torch.equal(pa, pb)


@pytest.mark.parametrize("stored", [(32, 16), (100, 45)])   # Market's 2x upscale; a downscale
def test_with_a_resize_the_images_are_within_one_grey_level(tmp_path, stored):
    pil, device = _both(_paths(tmp_path, stored), start=1)   # a resumed epoch: from its second batch on
    assert len(pil) == len(device) == 3
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for (a, pa, ia), (b, pb, ib) in zip(pil, device):
        assert torch.equal(ia, ib)
        for x, y in ((a, b), (pa, pb)):
            levels = ((x - y).abs() * std * 255).amax()
            assert levels <= GREY_TOL
        assert not torch.equal(a, pa)   # the partners are other images, or other draws


def test_auto_is_the_device_path_on_cuda_only():
    assert augments_on_device("auto", torch.device("cuda")) and not augments_on_device("auto", torch.device("cpu"))
    assert augments_on_device("device", torch.device("cpu")) and not augments_on_device("loader", torch.device("cuda"))
