"""Plain dense CA-Jaccard written straight from docs/ca-jaccard.md (loops allowed, float64).

Test-only, independent of dsgl_cli.clustering.camera_aware: full N x N matrices, stable sorts by
the spec's (penalty, D) keys, explicit sets. The keyword knobs build the spec's negative controls
(section 11): each is a plausible misreading that must move the distance.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def camera_biased_features(sizes: list[int], num_ids: int, d: int, seed: int, bias: float = 0.9,
                           noise: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit rows of ``num_ids`` identities seen by cameras of the given sizes; every camera adds its own
    offset, so most raw nearest neighbours share the camera. Returns (features, cameras, ids)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, d))
    offsets = rng.standard_normal((len(sizes), d))
    cams = np.repeat(np.arange(len(sizes)), sizes)
    ids = rng.integers(0, num_ids, cams.size)
    x = centres[ids] + bias * offsets[cams] + noise * rng.standard_normal((cams.size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(cams.size)   # cameras interleaved, not in blocks
    return x[order].astype(np.float32), cams[order], ids[order]


def reference_ca_jaccard(
    x: np.ndarray, cams: np.ndarray, epoch: Optional[int], k1_intra: int = 5, k1_inter: int = 20,
    k2_intra: int = 2, k2_inter: int = 4, k2: int = 6, *, intra_list: Optional[int] = None,
    inter_list: Optional[int] = None, expand: bool = True, warmup: bool = True,
    force_k2: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """Dense N x N CA-Jaccard (spec steps 1-15). ``epoch=None``: no training, the given k2 sizes.

    Negative-control knobs: ``intra_list`` / ``inter_list`` replace the forward list lengths
    (spec: k + 1), ``expand=False`` drops the query expansion, ``warmup=False`` ignores the epoch-0
    3/3 rule, ``force_k2`` uses the given sizes at every epoch.
    """
    f = x.astype(np.float64)
    n = len(f)
    dist = 2.0 - 2.0 * f @ f.T                                   # step 1
    same = cams[:, None] == cams[None, :]
    key_intra = dist + 999.0 * ~same                             # step 2
    key_inter = dist + 999.0 * same
    rank_intra = np.argsort(key_intra, axis=1, kind="stable")    # step 3
    rank_inter = np.argsort(key_inter, axis=1, kind="stable")
    for i in range(n):   # self first in its intra list (D[i,i] = 0 exactly here, so only a tie could move it)
        row = [j for j in rank_intra[i] if j != i]
        rank_intra[i] = [i] + row
    li = k1_intra + 1 if intra_list is None else intra_list      # step 4
    le = k1_inter + 1 if inter_list is None else inter_list
    fwd_intra = [set(rank_intra[i, :li].tolist()) for i in range(n)]
    fwd_inter = [set(rank_inter[i, :le].tolist()) for i in range(n)]
    v = np.zeros((n, n))
    for i in range(n):
        r_intra = {j for j in fwd_intra[i] if i in fwd_intra[j]}   # step 5
        r_inter = {j for j in fwd_inter[i] if i in fwd_inter[j]}
        members = sorted(r_intra | r_inter)                        # step 6
        w = np.exp(-dist[i, members])                              # step 8
        v[i, members] = w / w.sum()
    a, b = k2_intra, k2_inter
    if warmup and epoch == 0:                                      # step 9
        a, b = 3, 3
    if force_k2 is not None:
        a, b = force_k2
    if expand and k2 != 1:                                         # steps 10-12
        vq = np.zeros_like(v)
        for i in range(n):
            q = list(rank_intra[i, :a]) + list(rank_inter[i, :b])
            vq[i] = v[q].sum(axis=0) / len(q)
        v = vq
    jac = np.zeros((n, n))
    for i in range(n):                                             # steps 13-15
        s = np.minimum(v[i][None, :], v).sum(axis=1)
        jac[i] = np.maximum(1.0 - s / (2.0 - s), 0.0)
    return jac
