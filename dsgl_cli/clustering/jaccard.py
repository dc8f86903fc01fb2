"""The clustering distance: sparse k-reciprocal Jaccard distance between training features (method.md 4.2).

The k-reciprocal steps are shared with retrieval re-ranking (`clustering/kreciprocal.py`); what is
the clustering's own: rank lists from an exact neighbour search, the encoded distance 2 - 2 f_i.f_j,
and a join over *all* pairs that keeps only those within a threshold. The reference builds dense
N x N matrices (4 GB each at MSMT17 size); here every step after the search is vectorised over
sparse structures and the min-join runs in row chunks, so memory grows with N x neighbourhood
size, never N^2.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from dsgl_cli.clustering.kreciprocal import encode, expand_queries, expanded_sets, jaccard_from_overlap, support_pairs
from dsgl_cli.clustering.neighbours import knn_search
from dsgl_cli.errors import DsglError

Features = Union[torch.Tensor, np.ndarray]
SearchFn = Callable[[Features, int], Tuple[np.ndarray, np.ndarray]]

#: attribute set on the returned matrix: pairs farther than this were left out
MAX_DISTANCE_ATTR = "max_distance"

_CHUNK_CELLS = 1 << 22  # accumulator cells (rows x distinct partners) per row chunk: 32 MiB
_CHUNK_CONTRIB = 1 << 21  # (entry, partner) contributions generated per row chunk
_DOT_CHUNK = 1 << 13  # feature pairs per gathered dot-product batch
_DEVICE_CHUNK_CELLS = 1 << 25  # the same two on a GPU: 256 MiB float64 accumulators, few launches
_DEVICE_CHUNK_CONTRIB = 1 << 24


def _first_occurrence(idx: np.ndarray) -> np.ndarray:
    """Mask of the first copy of every id in each row (approximate searches may repeat ids)."""
    order = np.argsort(idx, axis=1, kind="stable")
    ranked = np.take_along_axis(idx, order, axis=1)
    dup = np.zeros(idx.shape, dtype=bool)
    dup[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    mask = np.empty(idx.shape, dtype=bool)
    np.put_along_axis(mask, order, ~dup, axis=1)
    return mask


def _pair_similarities(
    features: Features, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """f_i . f_j for the given pairs: read from the search result where present, else computed."""
    n, k = idx.shape
    first = _first_occurrence(idx)
    known = sp.csr_matrix(
        ((sims.astype(np.float64) + 8.0)[first], (np.nonzero(first)[0], idx[first])), shape=(n, n)
    )  # +8 keeps every stored similarity positive, so 0 means "not in the search result"
    sims = np.asarray(known[rows, cols]).ravel()
    missing = np.flatnonzero(sims == 0.0)
    sims = (sims - 8.0).astype(np.float32)
    if missing.size:
        x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
        x = x.detach().float()
        mi = torch.from_numpy(rows[missing]).to(x.device)
        mj = torch.from_numpy(cols[missing]).to(x.device)
        out = torch.empty(missing.size, dtype=torch.float32, device=x.device)
        for s in range(0, missing.size, _DOT_CHUNK):
            e = s + _DOT_CHUNK
            out[s:e] = (x[mi[s:e]] * x[mj[s:e]]).sum(1)
        sims[missing] = out.cpu().numpy()
    return sims


def encode_neighbourhoods(
    features: Features, sims: np.ndarray, idx: np.ndarray, k1: int, k2: int
) -> sp.csr_matrix:
    """The sparse matrix V of 4.2: softmax of -(2 - 2 f_i.f_j) over the expanded set, then the
    local query expansion over the top-k2 lists (skipped when k2 == 1)."""
    support = expanded_sets(idx, k1)
    rows, cols = support_pairs(support)
    sims = _pair_similarities(features, rows, cols, sims, idx).astype(np.float64)
    return expand_queries(encode(support, 2.0 - 2.0 * sims), idx, k2)


class _ColumnIndex:
    """V stored column-wise (rows sorted inside each column) plus, for each CSR entry of V,
    its position in that column order: the partners j > i of entry (i, k) follow it directly."""

    def __init__(self, v: sp.csr_matrix) -> None:
        n = v.shape[0]
        order = np.argsort(v.indices, kind="stable")  # CSR is row-major, so rows stay sorted
        self.rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(v.indptr))[order]
        self.data = v.data[order]
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(v.indices, minlength=n), out=self.indptr[1:])
        self.position = np.empty(v.nnz, dtype=np.int64)
        self.position[order] = np.arange(v.nnz, dtype=np.int64)


def _min_join_chunk(
    v: sp.csr_matrix, cols: _ColumnIndex, start: int, stop: int, s_min: float,
    mark: np.ndarray, slot: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows start..stop of s_ij = sum_k min(V_ik, V_jk), only j > i, only s_ij >= s_min."""
    lo, hi = int(v.indptr[start]), int(v.indptr[stop])
    e_len = np.diff(v.indptr[start:stop + 1])
    seg_start = cols.position[lo:hi] + 1
    seg_len = cols.indptr[v.indices[lo:hi].astype(np.int64) + 1] - seg_start
    total = int(seg_len.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
    # position in the column store of every (entry, partner) contribution
    pos = np.repeat(seg_start - (np.cumsum(seg_len) - seg_len), seg_len)
    pos += np.arange(total, dtype=np.int64)
    contrib = np.minimum(np.repeat(v.data[lo:hi], seg_len), cols.data[pos])
    partner = cols.rows[pos]
    # compact the partners of this chunk to 0..W-1 so the accumulator is rows x W, not rows x N
    mark[partner] = True
    uniq = np.flatnonzero(mark)
    mark[uniq] = False
    width = uniq.size
    slot[uniq] = np.arange(width, dtype=slot.dtype)
    flat = np.repeat(np.repeat(np.arange(stop - start, dtype=np.int64) * width, e_len), seg_len)
    flat += slot[partner]
    acc = np.bincount(flat, weights=contrib, minlength=(stop - start) * width)
    hit = np.flatnonzero(acc >= s_min)
    return hit // width + start, uniq[hit % width], acc[hit]


def _min_join_chunk_on(
    arrays: dict, start: int, stop: int, s_min: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_min_join_chunk` with torch on the device of `arrays` (V and its column index there)."""
    lo, hi = int(arrays["indptr_h"][start]), int(arrays["indptr_h"][stop])
    e_len = torch.diff(arrays["indptr"][start:stop + 1])
    seg_start = arrays["position"][lo:hi] + 1
    seg_len = arrays["col_indptr"][arrays["indices"][lo:hi] + 1] - seg_start
    ends = torch.cumsum(seg_len, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if total == 0:
        empty = torch.empty(0, dtype=torch.int64, device=seg_len.device)
        return empty, empty, empty.double()
    pos = torch.repeat_interleave(seg_start - (ends - seg_len), seg_len, output_size=total)
    pos += torch.arange(total, dtype=torch.int64, device=pos.device)
    contrib = torch.minimum(torch.repeat_interleave(arrays["data"][lo:hi], seg_len, output_size=total),
                            arrays["col_data"][pos])
    uniq, slot = torch.unique(arrays["col_rows"][pos], return_inverse=True)
    width = uniq.numel()
    row = torch.arange(stop - start, dtype=torch.int64, device=pos.device) * width
    flat = torch.repeat_interleave(torch.repeat_interleave(row, e_len, output_size=hi - lo), seg_len,
                                   output_size=total) + slot
    acc = torch.bincount(flat, weights=contrib, minlength=(stop - start) * width)
    hit = torch.nonzero(acc >= s_min).view(-1)
    return hit // width + start, uniq[hit % width], acc[hit]


def _min_similarity(max_distance: float) -> float:
    """The least s_ij whose distance 1 - s/(2-s) can be <= max_distance (a hair lower, for rounding)."""
    return 2.0 * (1.0 - max_distance) / (2.0 - max_distance) * (1.0 - 1e-6)


def _min_join_host(v: sp.csr_matrix, cols: _ColumnIndex, s_min: float) -> Tuple[np.ndarray, ...]:
    """Every pair j > i with s_ij >= s_min, in NumPy row chunks (rows, partners, s)."""
    n = v.shape[0]
    mark = np.zeros(n, dtype=bool)
    slot = np.zeros(n, dtype=np.int64)
    parts = [_min_join_chunk(v, cols, start, stop, s_min, mark, slot)
             for start, stop in _row_chunks(v, cols, _CHUNK_CONTRIB, _CHUNK_CELLS)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _min_join_on(v: sp.csr_matrix, cols: _ColumnIndex, s_min: float,
                 device: torch.device) -> Tuple[np.ndarray, ...]:
    """Every pair j > i with s_ij >= s_min, computed on `device` in large row chunks."""
    arrays = {"indptr_h": v.indptr}
    for key, array in (("indptr", v.indptr), ("indices", v.indices), ("data", v.data), ("position", cols.position),
                       ("col_indptr", cols.indptr), ("col_rows", cols.rows), ("col_data", cols.data)):
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        arrays[key] = tensor.double() if tensor.is_floating_point() else tensor.long()
    parts = [_min_join_chunk_on(arrays, start, stop, s_min)
             for start, stop in _row_chunks(v, cols, _DEVICE_CHUNK_CONTRIB, _DEVICE_CHUNK_CELLS)]
    return tuple(torch.cat([p[k] for p in parts]).cpu().numpy() for k in range(3))


def _row_chunks(v: sp.csr_matrix, cols: _ColumnIndex, contrib: int, cells: int) -> list:
    """Row ranges of about `contrib` contributions whose rows x min(N, contributions)
    accumulator bound stays within `cells` (at least one row each)."""
    n = v.shape[0]
    seg_len = cols.indptr[v.indices.astype(np.int64) + 1] - (cols.position + 1)
    entry_row = np.repeat(np.arange(n), np.diff(v.indptr))
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(entry_row, weights=seg_len, minlength=n).astype(np.int64), out=cum[1:])
    chunks, start = [], 0
    while start < n:
        stop = int(np.searchsorted(cum, cum[start] + contrib, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        while stop - start > 1 and (stop - start) * min(n - start, cum[stop] - cum[start]) > cells:
            stop = start + (stop - start) // 2
        chunks.append((start, stop))
        start = stop
    return chunks


def _indptr(sorted_rows: np.ndarray, n: int) -> np.ndarray:
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_rows, minlength=n), out=indptr[1:])
    return indptr


def _symmetric_with_diagonal(
    n: int, upper_r: np.ndarray, upper_c: np.ndarray, upper_d: np.ndarray
) -> sp.csr_matrix:
    """CSR of the upper-triangle pairs mirrored, plus explicit zeros on the diagonal, without sorting.

    Row i holds its lower part (cols < i, from the mirror), then i itself, then its upper part,
    each already in increasing column order, so entries are placed by counting, not sorting.
    """
    upper = sp.csr_matrix((upper_d, upper_c, _indptr(upper_r, n)), shape=(n, n))
    lower = upper.tocsc()  # column-major of the upper part = row-major of its mirror; zeros kept
    lo_cnt, up_cnt = np.diff(lower.indptr), np.diff(upper.indptr)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lo_cnt + up_cnt + 1, out=indptr[1:])
    nnz = int(indptr[-1])
    cols = np.empty(nnz, dtype=np.int64)
    data = np.empty(nnz, dtype=np.float32)
    lo_pos = np.repeat(indptr[:-1] - lower.indptr[:-1], lo_cnt) + np.arange(lower.nnz)
    cols[lo_pos], data[lo_pos] = lower.indices, lower.data
    diag_pos = indptr[:-1] + lo_cnt
    cols[diag_pos], data[diag_pos] = np.arange(n), 0.0
    up_pos = np.repeat(diag_pos + 1 - upper.indptr[:-1], up_cnt) + np.arange(upper.nnz)
    cols[up_pos], data[up_pos] = upper.indices, upper.data
    return sp.csr_matrix((data, cols, indptr), shape=(n, n))


def jaccard_from_encoding(v: sp.csr_matrix, max_distance: float = 0.95,
                          device: Optional[torch.device] = None) -> sp.csr_matrix:
    """``1 - s/(2-s)``, ``s = sum_k min(V_ik, V_jk)``, clamped at 0, for every pair <= max_distance.

    The diagonal is stored as explicit zeros; absent pairs are farther than ``max_distance``.
    With a CUDA `device` the min-join (most of the time after the search) runs there.
    """
    n = v.shape[0]
    v = v.tocsr()
    v.sort_indices()
    cols = _ColumnIndex(v)
    s_min = _min_similarity(max_distance)
    joined = None
    if device is not None and torch.device(device).type == "cuda":
        try:
            joined = _min_join_on(v, cols, s_min, torch.device(device))
        except torch.cuda.OutOfMemoryError:   # a full GPU: the host join needs no device memory
            torch.cuda.empty_cache()
    r, c, s = joined if joined is not None else _min_join_host(v, cols, s_min)
    d = jaccard_from_overlap(s)
    keep = d <= max_distance
    out = _symmetric_with_diagonal(n, r[keep], c[keep], d[keep].astype(np.float32))
    setattr(out, MAX_DISTANCE_ATTR, float(max_distance))
    return out


def neighbour_lists(features: Features, k1: int, search: Optional[SearchFn] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(inner products, ids) of every image's k1 nearest neighbours, itself first (method.md 4.2).

    The reference asks its exact search for k1 neighbours, itself included, so every later "top
    k+1" slice of these lists is cut at k1 columns; Zhong et al.'s own k1 + 1 stays with retrieval
    re-ranking, where the reference uses it.
    """
    n = int(features.shape[0])
    if k1 > n:
        raise DsglError(f"--k1 {k1} asks for more neighbours than the {n} images to cluster; use --k1 {n} or less "
                        f"(the reference's 30 suits thousands of images)", exit_code=2)
    sims, idx = (search or knn_search)(features, k1)
    return np.asarray(sims, dtype=np.float32), np.asarray(idx, dtype=np.int64)


def compute_jaccard_distance(
    features: Features,
    k1: int = 30,
    k2: int = 6,
    max_distance: float = 0.95,
    search: Optional[SearchFn] = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance of unit feature rows as a sparse N x N float32 matrix (4.2).

    Holds every pair with distance <= ``max_distance`` (diagonal as explicit zeros); absent
    pairs are farther. The neighbour lists are k1 wide, as the reference's search returns them.
    ``search(features, k) -> (inner products, ids)`` replaces the exact
    :func:`knn_search` (e.g. its IVF mode); ids must list each row first in its own row.
    The matrix carries ``max_distance`` as an attribute so :func:`dbscan` can check eps.
    """
    if k1 < 1 or k2 < 1:
        raise DsglError(f"k1 and k2 must be at least 1 (got k1={k1}, k2={k2})", exit_code=2)
    if not 0.0 < max_distance < 1.0:
        raise DsglError(f"max_distance must lie in (0, 1), got {max_distance}", exit_code=2)
    if features.ndim != 2 or features.shape[0] == 0:
        raise DsglError("features must be a non-empty N x d matrix; extract features first")
    sims, idx = neighbour_lists(features, k1, search)
    v = encode_neighbourhoods(features, sims, idx, k1, k2)
    device = features.device if isinstance(features, torch.Tensor) else None
    return jaccard_from_encoding(v, max_distance, device)
