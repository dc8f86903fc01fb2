"""Dealing a fixed number of images out to identities, so a sized demo set hits its split totals exactly.

Why not draw each identity's count independently: the totals would then wander by a few per cent
from seed to seed, and a preset meant to match Market-1501's published counts would not.
"""

from __future__ import annotations

import numpy as np

from dsgl_cli.errors import DsglError


def allocate(rng: np.random.Generator, total: int, low: np.ndarray, high: int, spread: float, what: str) -> np.ndarray:
    """Integers n_i with low_i <= n_i <= high and sum n_i == total, drawn at random.

    Beyond its minimum each entry gets a share of the rest in proportion to a log-normal weight
    (`spread` is its sigma; 0 gives near-equal shares), so a few identities are seen much more
    often than others, as in real footage. Entries at `high` pass their surplus on to the rest.
    """
    low = np.asarray(low, dtype=np.int64)
    if not int(low.sum()) <= total <= len(low) * high:
        raise DsglError(
            f"demo {what}: {total} cannot be split over {len(low)} ids with {int(low.min())}..{high} each",
            exit_code=2,
        )
    weights = rng.lognormal(0.0, spread, len(low)) if spread > 0 else np.ones(len(low))
    counts = low.copy()
    left = total - int(low.sum())
    while left > 0:  # each round places at least one image: an entry with room gets a positive share
        room = high - counts
        w = np.where(room > 0, weights, 0.0)
        add = np.minimum(rng.multinomial(left, w / w.sum()), room)
        counts += add
        left -= int(add.sum())
    return counts
