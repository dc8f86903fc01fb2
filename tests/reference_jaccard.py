"""Plain dense k-reciprocal Jaccard distance written straight from method.md 4.2 (loops allowed).

Test-only reference for dsgl_cli.clustering.jaccard; O(N^2) memory, so keep N small.
"""

from __future__ import annotations

import numpy as np


def clustered_unit_features(n: int, d: int, num_clusters: int, noise: float, seed: int) -> np.ndarray:
    """Unit rows around random centres with uneven cluster sizes and some loose points."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.dirichlet(np.ones(num_clusters) * 2.0)
    labels = rng.choice(num_clusters, size=n, p=sizes)
    x = centres[labels] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    loose = rng.random(n) < 0.05
    x[loose] = rng.standard_normal((int(loose.sum()), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def reference_ranking(features: np.ndarray) -> np.ndarray:
    """Full neighbour ranking by inner product (float64), every row starting with itself."""
    f = features.astype(np.float64)
    sims = f @ f.T
    n = len(f)
    rank = np.empty((n, n), dtype=np.int64)
    for i in range(n):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i]
        rank[i] = [i] + order
    return rank


def k_reciprocal(rank: np.ndarray, i: int, k: int) -> list:
    """R(i,k): j in the first k+1 entries of i's list whose own first k+1 entries hold i."""
    return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]


def reference_jaccard(features: np.ndarray, k1: int, k2: int, width: int | None = None) -> np.ndarray:
    """Dense N x N Jaccard distance following method.md 4.2 step by step.

    The reference's search returns ``k1`` neighbours per image, itself included, so the rank lists
    are k1 wide and every ``[:k+1]`` slice below is cut there. ``width`` overrides that (k1 + 1 is
    Zhong et al.'s original, kept by the tests to show the difference matters).
    """
    f = features.astype(np.float64)
    n = len(f)
    rank = reference_ranking(features)[:, : (k1 if width is None else width)]
    half = int(round(k1 / 2))  # Python's round is banker's rounding, like np.around
    r1 = [k_reciprocal(rank, i, k1) for i in range(n)]
    r2 = [k_reciprocal(rank, i, half) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        expanded = set(r1[i])
        for j in r1[i]:
            cand = r2[j]
            if len(set(cand) & set(r1[i])) > 2 / 3 * len(cand):
                expanded |= set(cand)
        members = sorted(expanded)
        w = np.exp(-(2.0 - 2.0 * f[members] @ f[i]))
        v[i, members] = w / w.sum()
    if k2 != 1:
        vq = np.zeros_like(v)
        for i in range(n):
            vq[i] = v[rank[i, :k2]].mean(axis=0)
        v = vq
    jac = np.zeros((n, n))
    for i in range(n):
        s = np.minimum(v[i][None, :], v).sum(axis=1)  # s_ij for every j
        jac[i] = np.maximum(1.0 - s / (2.0 - s), 0.0)
    return jac
