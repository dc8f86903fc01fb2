"""Camera-aware pseudo-identity sampling with L_kl partners (method.md 3 and 5.3).

The sampler draws the *global* batch of every iteration from one stream keyed by (seed, epoch), the
same on every process, and each process takes its contiguous slice; with the augmentation keyed by
(seed, epoch, iteration, position in the global batch), a run gives the same batches whatever the
number of loader workers or processes. Batches carry ``(anchor, partner, iteration, position)`` so
the loader workers load the partner with the anchor and key its augmentation.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
from torch.utils.data import Sampler

from dsgl_cli.errors import DsglError

#: stream ids under the (seed, epoch) key: the sampler's draws and nothing else use this one
SAMPLER_STREAM = 1


class Item(NamedTuple):
    """One image of a batch: the anchor row, its L_kl partner row, and where it sits in the run."""

    anchor: int
    partner: int
    iteration: int
    position: int   # in the global batch


class PseudoIdentitySampler:
    """One pass over the clustered images (method.md 3).

    With ``num_instances`` > 0: for each (shuffled) pseudo identity, one random image and
    ``num_instances - 1`` more from other cameras when any exist, else from its other images.
    With 0: the clustered images, shuffled (the reference's loader without an identity sampler).
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, cams: Sequence[int] | np.ndarray,
                 num_instances: int) -> None:
        labels = np.asarray(labels)
        self.cams = np.asarray(cams)
        self.labels = labels
        self.num_instances = num_instances
        clustered = np.flatnonzero(labels >= 0)
        order = np.argsort(labels[clustered], kind="stable")
        ids, starts = np.unique(labels[clustered][order], return_index=True)
        self.members: dict[int, np.ndarray] = {
            int(label): clustered[order][start:stop]
            for label, start, stop in zip(ids, starts, [*starts[1:], clustered.size])
        }
        self.clustered = clustered

    def pass_length(self) -> int:
        """Images in one pass (fixed: the draws change, the count does not)."""
        if self.num_instances == 0:
            return int(self.clustered.size)
        extra = self.num_instances - 1
        return sum(1 + (extra if index.size > 1 else 0) for index in self.members.values())

    def one_pass(self, rng: np.random.Generator) -> list[int]:
        """Indices of one pass, identity by identity."""
        if self.num_instances == 0:
            return [int(i) for i in rng.permutation(self.clustered)]
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


class IterationBatchSampler(Sampler[list[Item]]):
    """This process's slice of every global batch of one epoch.

    ``iters`` batches drawn from consecutive passes of the stream, as the reference's iterator that
    restarts when exhausted; an incomplete batch at the end of a pass is dropped. ``iters`` 0 means
    one pass. ``start`` skips the first batches (a resumed epoch), drawing them all the same so the
    rest is unchanged. ``rank`` / ``world`` pick the contiguous slice of the global batch.
    """

    def __init__(self, sampler: PseudoIdentitySampler, batch_size: int, iters: int, seed: int, epoch: int,
                 rank: int = 0, world: int = 1, start: int = 0) -> None:
        if batch_size % world:
            raise DsglError(f"-b/--batch-size {batch_size} must be divisible by the world size {world}", exit_code=2)
        length = sampler.pass_length()
        if length < batch_size:
            how = ("" if sampler.num_instances == 0 else
                   f" ({len(sampler.members)} pseudo identities x up to {sampler.num_instances} images)")
            raise DsglError(f"one pass of the sampler yields {length} images{how}, fewer than a batch of "
                            f"{batch_size}; lower -b/--batch-size or --num-instances, or raise --eps for more "
                            f"clusters")
        self.sampler, self.batch_size, self.seed, self.epoch = sampler, batch_size, seed, epoch
        self.iters = iters if iters > 0 else length // batch_size
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return self.iters - self.start

    def __iter__(self) -> Iterator[list[Item]]:
        rng = np.random.default_rng([self.seed, self.epoch, SAMPLER_STREAM])
        local = self.batch_size // self.world
        mine = slice(self.rank * local, (self.rank + 1) * local)
        produced = 0
        while produced < self.iters:
            stream = np.asarray(self.sampler.one_pass(rng), dtype=np.int64)
            full = len(stream) // self.batch_size
            partners = self.sampler.partners(stream[: full * self.batch_size], rng)
            for b in range(full):
                if produced == self.iters:
                    return
                sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
                if produced >= self.start:
                    anchors, mates = stream[sl][mine], partners[sl][mine]
                    positions = range(mine.start, mine.stop)
                    yield [Item(int(a), int(p), produced, pos) for a, p, pos in zip(anchors, mates, positions)]
                produced += 1
