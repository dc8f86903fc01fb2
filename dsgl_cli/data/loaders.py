"""Datasets and DataLoaders over image paths; one code path for CPU and CUDA.

Loader workers never raise or print: an image that cannot be read travels back as an `Unreadable`
marker and the main process turns it into one line naming the file (`checked`), and workers ignore
Ctrl-C, which the main process handles alone.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from dsgl_cli.data.augment import ROLE_ANCHOR, ROLE_PARTNER, KeyedTrainAugment
from dsgl_cli.data.images import reason, unreadable_image
from dsgl_cli.data.sampler import Item, IterationBatchSampler
from dsgl_cli.errors import DsglError


@dataclass(frozen=True)
class Unreadable:
    """An image a worker could not decode, sent back instead of a batch."""

    path: str
    reason: str

    def error(self) -> DsglError:
        return unreadable_image(self.path, self.reason)


def read_rgb(path: str) -> Image.Image:
    """Open an image as RGB (grey, palette, CMYK and RGBA images are converted)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def _guarded(load: Callable[[], Any], path: str) -> Any:
    try:
        return load()
    except Exception as exc:  # PIL raises many types for broken files; all mean "unreadable"
        return Unreadable(path, reason(exc))


class ImageDataset(Dataset):
    """Images by index, returned with their index (feature extraction)."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Union[tuple[torch.Tensor, int], Unreadable]:
        path = self.paths[index]
        return _guarded(lambda: (self.transform(read_rgb(path)), index), path)


class PairDataset(Dataset):
    """An anchor image and (for DLhybrid) its L_kl partner, each with its keyed train augmentation."""

    def __init__(self, paths: Sequence[str], augment: KeyedTrainAugment, epoch: int, partners: bool) -> None:
        self.paths, self.augment, self.epoch, self.partners = list(paths), augment, epoch, partners

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int, item: Item, role: int) -> torch.Tensor:
        return self.augment(read_rgb(self.paths[index]), self.epoch, item.iteration, item.position, role)

    def __getitem__(self, item: Item) -> Union[tuple[torch.Tensor, torch.Tensor, int], Unreadable]:
        anchor = _guarded(lambda: self._load(item.anchor, item, ROLE_ANCHOR), self.paths[item.anchor])
        if isinstance(anchor, Unreadable) or not self.partners:
            return anchor if isinstance(anchor, Unreadable) else (anchor, torch.empty(0), item.anchor)
        partner = _guarded(lambda: self._load(item.partner, item, ROLE_PARTNER), self.paths[item.partner])
        return partner if isinstance(partner, Unreadable) else (anchor, partner, item.anchor)


def _collate(batch: list[Any]) -> Any:
    """The default collation, or the first `Unreadable` of the batch."""
    for element in batch:
        if isinstance(element, Unreadable):
            return element
    return default_collate(batch)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _quiet_worker(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal; the main process stops the workers itself.

    Workers start with the stop signals blocked (see `checked`); they ignore them, then unblock.
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while worker processes are forked, so none is hit before it can ignore
    them (a Ctrl-C during a loader's start-up gave one traceback per worker); the main process
    receives a held signal as soon as the workers are up."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def checked(loader: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """``with checked(loader) as batches``: the loader's batches, an unreadable image as one line naming
    it; on leaving the block, however, its workers are stopped and joined.

    Why not leave that to garbage collection: an exception's traceback holds the iterator in a
    reference cycle, so its workers outlived the error; at exit multiprocessing then SIGTERMs them,
    which they ignore (`_quiet_worker`), and joins them: a process that hung for good after Ctrl-C.
    """
    with _stop_signals_blocked():
        iterator = iter(loader)

    def batches() -> Iterator[Any]:
        for batch in iterator:
            if isinstance(batch, Unreadable):
                raise batch.error()
            yield batch

    try:
        yield batches()
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)   # torch's multi-process iterator only
        if shutdown is not None:
            shutdown()


def loader_kwargs(workers: int, device: torch.device) -> dict:
    """Worker and pinning settings shared by every loader."""
    kwargs: dict = {"num_workers": workers, "pin_memory": device.type == "cuda", "collate_fn": _collate}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4, worker_init_fn=_quiet_worker)
    return kwargs


def extraction_loader(paths: Sequence[str], transform: Callable, batch_size: int, workers: int,
                      device: torch.device) -> DataLoader:
    """Ordered batches for feature extraction."""
    return DataLoader(ImageDataset(paths, transform), batch_size=batch_size, shuffle=False,
                      **loader_kwargs(workers, device))


def train_loader(paths: Sequence[str], augment: KeyedTrainAugment, epoch: int, batch_sampler: IterationBatchSampler,
                 workers: int, device: torch.device, partners: bool) -> DataLoader:
    """One epoch's batches of (anchor images, partner images, anchor indices), keyed augmentation."""
    return DataLoader(PairDataset(paths, augment, epoch, partners), batch_sampler=batch_sampler,
                      **loader_kwargs(workers, device))
