"""Plain per-query evaluation from method.md section 6, built on scikit-learn's AP.

The reference that evaluate_rank is tested against (tests) and timed against (benchmarks).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def loop_evaluate(dist, qp, gp, qc, gc, max_rank=50):
    """Straightforward reference: one query at a time, sklearn AP, stable order for CMC/mINP."""
    aps, cmcs, inps = [], [], []
    for i in range(dist.shape[0]):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        d = dist[i][keep]
        match = gp[keep] == qp[i]
        if not match.any():
            continue
        aps.append(average_precision_score(match, -d))
        ranked = match[np.argsort(d, kind="stable")]
        cmc = np.zeros(max_rank)
        first = int(np.argmax(ranked))
        if first < max_rank:
            cmc[first:] = 1.0
        cmcs.append(cmc)
        hardest = np.flatnonzero(ranked)[-1]
        inps.append(ranked.sum() / (hardest + 1))
    return float(np.mean(aps)), np.mean(cmcs, axis=0), float(np.mean(inps)), len(aps)
