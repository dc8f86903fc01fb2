"""Camera-aware pseudo-identity sampling with L_kl partners (method.md sections 3 and 5.3).

The sampler yields ``(anchor, partner)`` index pairs so that partner images are loaded by
the DataLoader workers with the anchors, never synchronously inside the training loop.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PseudoIdentitySampler:
    """One pass over the pseudo identities: for each (shuffled) identity, one random image and
    ``num_instances - 1`` more from other cameras when any exist, else from its other images."""

    def __init__(self, labels: Sequence[int] | np.ndarray, cams: Sequence[int] | np.ndarray,
                 num_instances: int) -> None:
        labels = np.asarray(labels)
        cams = np.asarray(cams)
        self.num_instances = num_instances
        self.members: dict[int, np.ndarray] = {}
        for label in np.unique(labels[labels >= 0]):
            self.members[int(label)] = np.flatnonzero(labels == label)
        self.cams = cams
        self.labels = labels

    def one_pass(self, rng: np.random.Generator) -> list[int]:
        """Indices of one pass, identity by identity."""
        out: list[int] = []
        extra = self.num_instances - 1
        for label in rng.permutation(list(self.members)):
            index = self.members[int(label)]
            first = int(rng.choice(index))
            out.append(first)
            if extra == 0:
                continue
            other_cams = index[self.cams[index] != self.cams[first]]
            pool = other_cams if len(other_cams) else index[index != first]
            if len(pool) == 0:
                continue  # an identity of one image contributes just it
            out.extend(int(i) for i in rng.choice(pool, size=extra, replace=len(pool) < extra))
        return out

    def partners(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random image of each anchor's pseudo identity (possibly the anchor itself)."""
        result = np.empty(len(anchors), dtype=np.int64)
        for j, a in enumerate(anchors):
            index = self.members[int(self.labels[a])]
            result[j] = index[rng.integers(len(index))]
        return result


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """``iters`` batches of (anchor, partner) pairs drawn from consecutive passes of the stream.

    As in the reference (an iterator restarted when exhausted, ``drop_last``), an incomplete
    batch at the end of a pass is dropped and a new pass begins.
    """

    def __init__(self, sampler: PseudoIdentitySampler, batch_size: int, iters: int, seed: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.iters = iters
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.iters

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        produced = 0
        while produced < self.iters:
            stream = np.asarray(self.sampler.one_pass(self.rng), dtype=np.int64)
            full = len(stream) // self.batch_size
            if full == 0:
                raise ValueError(
                    f"one pass yields {len(stream)} images, fewer than a batch of {self.batch_size}"
                )
            partners = self.sampler.partners(stream[: full * self.batch_size], self.rng)
            for b in range(full):
                if produced == self.iters:
                    return
                sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield list(zip(stream[sl].tolist(), partners[sl].tolist()))
                produced += 1
