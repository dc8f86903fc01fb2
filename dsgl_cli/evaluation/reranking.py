"""k-reciprocal re-ranking of query/gallery distances (Zhong et al., CVPR 2017; method.md section 6).

Same numbers as Zhong et al.'s widely used ``re_ranking(q_g_dist, q_q_dist, g_g_dist)``: the
distances of all q+g items are squared, each item's row is divided by its largest value, the
k-reciprocal neighbours R(i, k1) are expanded by every R(c, round(k1/2)) of a member c that
shares more than 2/3 of its items with R(i, k1), the expanded set is encoded with weights
exp(-d) normalised to sum 1, averaged over each item's k2 nearest neighbours (local query
expansion), and the Jaccard distance between query and gallery encodings is mixed with the
original distance: ``(1 - lambda) * jaccard + lambda * original``.

The k-reciprocal steps are the clustering's (`clustering/kreciprocal.py`); what is retrieval's own,
as in Zhong et al.'s code: rank lists k1 + 1 wide over all q + g items, the squared original
distance over its row maximum as the encoded distance, the dense query x gallery join, and the mix
with the original distance. What differs from that code is how: no dense N x N copy and no
per-item loop. Rows of the original distance are produced in chunks (from the three matrices or
straight from features) to keep only the top ranks; the encodings are sparse matrices; and the
Jaccard numerator ``sum_k min(V[i, k], V[j, k])`` is a join over the shared non-zero columns k.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import scipy.sparse as sp
import torch

from dsgl_cli.clustering.kreciprocal import encode, expand_queries, expanded_sets, jaccard_from_overlap, support_pairs
from dsgl_cli.errors import DsglError

ArrayLike = Union[np.ndarray, torch.Tensor]

_CHUNK_ELEMENTS = 1 << 22  # distances per row chunk of the original distance
_MAX_PAIRS = 1 << 22  # (query entry, gallery entry) pairs per step of the Jaccard join


def rerank_features(
    qf: ArrayLike,
    gf: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked distances from (unit) query and gallery features, squared Euclidean as the base.

    Equal to Zhong et al.'s ``re_ranking`` on the three squared Euclidean distance matrices, but
    their rows are computed chunk by chunk (on the features' device), so no (q+g)^2 matrix is stored.
    """
    qf_t, gf_t = _as_features(qf, "qf"), _as_features(gf, "gf")
    if qf_t.shape[1] != gf_t.shape[1]:
        raise DsglError(
            f"query features have dimension {qf_t.shape[1]} but gallery features {gf_t.shape[1]}"
        )
    gf_t = gf_t.to(qf_t.device)
    return _k_reciprocal_rerank(_FeatureRows(qf_t, gf_t), qf_t.shape[0], gf_t.shape[0], k1, k2, lambda_value)


# --------------------------------------------------------------------------- rows
class _FeatureRows:
    """Rows of squared (squared Euclidean) distances computed from the features themselves."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor) -> None:
        self.x = torch.cat([qf, gf], dim=0)
        self.sq = (self.x * self.x).sum(1)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        d = torch.addmm(self.sq[None, :], self.x[start:stop], self.x.T, beta=1.0, alpha=-2.0)
        d += self.sq[start:stop, None]
        return d.clamp_(min=0).square_()

    def pairs(self, i: np.ndarray, e: np.ndarray) -> np.ndarray:
        out = np.empty(i.shape, dtype=np.float32)
        step = max(1, _CHUNK_ELEMENTS // max(1, self.x.shape[1]))
        for s in range(0, i.size, step):
            ii = torch.from_numpy(i[s : s + step]).to(self.x.device)
            ee = torch.from_numpy(e[s : s + step]).to(self.x.device)
            d = self.sq[ii] + self.sq[ee] - 2.0 * (self.x[ii] * self.x[ee]).sum(1)
            out[s : s + step] = d.clamp_(min=0).square_().cpu().numpy()
        return out


# --------------------------------------------------------------------------- the method
def _k_reciprocal_rerank(source, q: int, g: int, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Shared body of both entry points: ranks, k-reciprocal encodings, query expansion, Jaccard."""
    if k1 < 1 or k2 < 1:
        raise DsglError(f"re-ranking needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}", exit_code=2)
    if not 0.0 <= lambda_value <= 1.0:
        raise DsglError(f"re-ranking lambda must lie in [0, 1], got {lambda_value}", exit_code=2)
    if q == 0 or g == 0:
        raise DsglError("re-ranking needs at least one query and one gallery item")
    n = q + g
    width = min(n, max(k1 + 1, k2))

    # Pass over the rows: top-`width` ranks, row maxima, and the query x gallery original distance.
    rank = torch.empty((n, width), dtype=torch.int64)
    row_max = np.empty(n, dtype=np.float32)
    final = np.empty((q, g), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = source.rows(start, stop)
        peak = block.max(dim=1, keepdim=True).values
        peak[peak == 0] = 1  # an all-zero row (identical items) stays all zero, not NaN
        block = block / peak
        rank[start:stop] = torch.topk(block, width, dim=1, largest=False, sorted=True).indices.cpu()
        row_max[start:stop] = peak.squeeze(1).cpu().numpy()
        if start < q:
            b = min(stop, q)
            final[start:b] = block[: b - start, q:].cpu().numpy() * np.float32(lambda_value)

    # Zhong et al.'s lists are k1 + 1 wide (``width``), unlike the clustering's k1 (method.md 4.2 vs 6)
    rank_lists = rank.numpy()
    support = expanded_sets(rank_lists, k1)
    rows, cols = support_pairs(support)
    v = expand_queries(encode(support, source.pairs(rows, cols) / row_max[rows]), rank_lists, k2)
    overlap = _min_overlap(v[:q].tocsr(), v[q:].tocsc(), g)
    jaccard_from_overlap(overlap, out=overlap)
    overlap *= np.float32(1.0 - lambda_value)
    final += overlap
    return final


def _min_overlap(vq: sp.csr_matrix, vg: sp.csc_matrix, g: int) -> np.ndarray:
    """sum_k min(vq[i, k], vg[j, k]) for every query i and gallery j, joined on shared columns k."""
    q = vq.shape[0]
    out = np.zeros((q, g), dtype=np.float32)
    g_count = np.diff(vg.indptr)
    entry_pairs = g_count[vq.indices]  # partners of each query entry
    cum = np.concatenate([[0], np.cumsum(entry_pairs)])[vq.indptr[1:]]  # pairs up to each row's end
    start = 0
    while start < q:
        base = cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + _MAX_PAIRS, side="right")))
        stop = min(stop, q, start + max(1, _CHUNK_ELEMENTS // g))  # bounds the dense bincount too
        lo, hi = vq.indptr[start], vq.indptr[stop]
        counts = entry_pairs[lo:hi]
        total = int(counts.sum())
        if total:
            entry_row = np.repeat(np.arange(start, stop) - start, np.diff(vq.indptr[start : stop + 1]))
            which = np.repeat(np.arange(hi - lo), counts)
            offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = vg.indptr[vq.indices[lo:hi][which]] + offset
            contrib = np.minimum(vq.data[lo:hi][which], vg.data[pos])
            flat = entry_row[which] * g + vg.indices[pos]
            sums = np.bincount(flat, weights=contrib, minlength=(stop - start) * g)
            out[start:stop] = sums.reshape(stop - start, g)
        start = stop
    return out


# --------------------------------------------------------------------------- inputs
def _as_features(x: ArrayLike, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() != 2:
        raise DsglError(
            f"{name} must be a 2-D feature matrix (items x dimension), got shape {tuple(t.shape)}"
        )
    return t.float()
