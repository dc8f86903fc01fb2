"""Datasets and DataLoaders over image paths; one code path for CPU and CUDA."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dsgl_cli.data.sampler import IterationBatchSampler


def read_rgb(path: str) -> Image.Image:
    """Open an image as RGB (the error names the file, for corrupt inputs)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files
        raise OSError(f"cannot read image {path}: {exc}") from None


class ImageDataset(Dataset):
    """Images by index, returned with their index (feature extraction)."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[index])), index


class PairDataset(ImageDataset):
    """An anchor image and its L_kl partner, both with the train transform (method.md 5.3)."""

    def __getitem__(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:  # type: ignore[override]
        anchor, partner = pair
        return (self.transform(read_rgb(self.paths[anchor])),
                self.transform(read_rgb(self.paths[partner])), anchor)


def loader_kwargs(workers: int, device: torch.device) -> dict:
    """Worker and pinning settings shared by every loader."""
    kwargs: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        kwargs["persistent_workers"] = False
        kwargs["prefetch_factor"] = 4
    return kwargs


def extraction_loader(paths: Sequence[str], transform: Callable, batch_size: int, workers: int,
                      device: torch.device) -> DataLoader:
    """Ordered batches for feature extraction."""
    return DataLoader(ImageDataset(paths, transform), batch_size=batch_size, shuffle=False,
                      **loader_kwargs(workers, device))


def train_loader(paths: Sequence[str], transform: Callable, batch_sampler: IterationBatchSampler,
                 workers: int, device: torch.device) -> DataLoader:
    """One epoch's ``iters`` batches of (anchor images, partner images, anchor indices)."""
    return DataLoader(PairDataset(paths, transform), batch_sampler=batch_sampler,
                      **loader_kwargs(workers, device))
