"""Exact, vectorised retrieval metrics for re-ID: mAP, CMC and mINP (method.md section 6).

How it stays fast: after sorting each distance row once (values only, the floor of any
exact evaluation), everything else touches only the few gallery entries that share the
query's id. For such a true match at distance ``v`` we need

* ``#valid items with d <= v`` and ``d < v``: two binary searches in the sorted row, minus
  the (equally few) same-id-same-camera entries below ``v``;
* ``#true matches with d <= v``: a binary search among the query's own matches.

AP is then exactly ``sklearn.metrics.average_precision_score(match, -distance)``, ties
included: sklearn treats tied scores as one threshold, so every match in a tie group gets
the precision measured at the end of that group, which is what ``d <= v`` counts.

CMC and mINP need the *position* of the first and the last true match in the ranked list.
Ties there are broken by gallery index (the order a stable sort gives), so position
``= #valid with d < v + #valid with d == v and index < i``; the second term is only
computed, densely, for the rare match that has a tie.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from dsgl_cli.errors import DsglError

ArrayLike = Union[np.ndarray, torch.Tensor]

# Rows per chunk are chosen so that one chunk holds about this many distances: small enough
# to stay in cache for the sort and the id comparison, large enough to amortise overhead.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class RankResult:
    """Retrieval quality over the queries that have at least one valid true match."""

    mAP: float
    cmc: np.ndarray  # length max_rank; cmc[k-1] = fraction of queries matched within rank k
    mINP: float
    num_valid_queries: int

    @property
    def rank1(self) -> float:
        return float(self.cmc[0])

    @property
    def rank5(self) -> float:
        return float(self.cmc[min(4, len(self.cmc) - 1)])

    @property
    def rank10(self) -> float:
        return float(self.cmc[min(9, len(self.cmc) - 1)])

    def to_dict(self) -> dict[str, float]:
        """mAP, rank1, rank5, rank10 (those <= max_rank) and mINP, all as fractions in [0, 1]."""
        out: dict[str, float] = {"mAP": float(self.mAP)}
        for k in (1, 5, 10):
            if k <= len(self.cmc):
                out[f"rank{k}"] = float(self.cmc[k - 1])
        out["mINP"] = float(self.mINP)
        return out


def evaluate_rank(
    distmat: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    max_rank: int = 50,
) -> RankResult:
    """mAP / CMC / mINP of a query x gallery distance matrix, as method.md section 6 defines them.

    For each query, gallery entries with the same id *and* the same camera are dropped; AP is
    sklearn's ``average_precision_score`` on the ranked list (tied distances form one
    threshold); CMC uses first-match break and mINP the hardest (last) true match, with ties
    in position broken by gallery index. Queries without a valid true match are skipped.
    CUDA tensors are evaluated on their GPU; everything else on the CPU.
    """
    distance = _as_distance_tensor(distmat)
    num_q, num_g = distance.shape
    if max_rank < 1:
        raise DsglError(f"max_rank must be at least 1, got {max_rank}", exit_code=2)
    device = distance.device
    qp = _as_id_tensor(query_pids, "query_pids", num_q, device)
    gp = _as_id_tensor(gallery_pids, "gallery_pids", num_g, device)
    qc = _as_id_tensor(query_camids, "query_camids", num_q, device)
    gc = _as_id_tensor(gallery_camids, "gallery_camids", num_g, device)
    if num_q == 0 or num_g == 0:
        raise DsglError(f"cannot evaluate an empty distance matrix of shape {tuple(distance.shape)}")

    budget = _CHUNK_ELEMENTS * (16 if device.type == "cuda" else 1)  # GPUs like bigger launches
    rows = max(1, min(num_q, budget // max(num_g, 1)))
    starts = list(range(0, num_q, rows))

    def work(start: int) -> tuple[torch.Tensor, ...]:
        stop = min(start + rows, num_q)
        block = distance[start:stop]
        sorted_block = _sort_rows(block)
        if bool(torch.isnan(sorted_block[:, -1]).any()):  # sorts put NaN last
            raise DsglError("the distance matrix contains NaN values; check the extracted features")
        return _chunk_stats(block, sorted_block, qp[start:stop], qc[start:stop], gp, gc)

    if device.type == "cuda":
        parts = [work(s) for s in starts]
    else:
        parts = _map_cpu_chunks(work, starts)

    ap, first, last, n_match = (torch.cat(p).cpu() for p in zip(*parts))
    valid = n_match > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise DsglError(
            "no query has a true match in the gallery (same id, other camera); "
            "check that query and gallery ids and camera ids are the right arrays"
        )
    ap, first, last, n_match = ap[valid], first[valid], last[valid], n_match[valid]
    hist = torch.bincount(first.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = (torch.cumsum(hist, 0).double() / num_valid).numpy()
    inp = n_match.double() / (last + 1).double()
    return RankResult(
        mAP=float(ap.mean()),
        cmc=cmc,
        mINP=float(inp.mean()),
        num_valid_queries=num_valid,
    )


def _map_cpu_chunks(work, starts: list[int]) -> list:
    """Run ``work`` over row chunks, one chunk per CPU thread at a time.

    np.sort and torch kernels release the GIL, so chunks proceed in parallel; torch's own
    intra-op threads are paused meanwhile (restored after), because nesting them inside the
    chunk threads only oversubscribes the cores and the small per-chunk ops then crawl.
    """
    threads = torch.get_num_threads()
    workers = max(1, min(threads, len(starts), 8))
    torch.set_num_threads(1)
    try:
        if workers == 1:
            return [work(s) for s in starts]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(work, starts))
    finally:
        torch.set_num_threads(threads)


def _sort_rows(block: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending (values only); numpy's SIMD sort is the fastest on CPU."""
    if block.device.type == "cpu":
        return torch.from_numpy(np.sort(block.numpy(), axis=1))
    return torch.sort(block, dim=1).values


def _chunk_stats(
    distance: torch.Tensor,
    sorted_dist: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    gp: torch.Tensor,
    gc: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query row: AP, position of first and last true match, and number of true matches."""
    num_rows, num_g = distance.shape
    device = distance.device
    row, col = (gp.unsqueeze(0) == qp.unsqueeze(1)).nonzero(as_tuple=True)
    value = distance[row, col]
    junk = gc[col] == qc[row]  # same id and same camera: removed from the ranked list

    m_row, m_col, m_val, n_m = _by_row_then_value(row[~junk], col[~junk], value[~junk], num_rows)
    r_row, r_col, r_val, n_r = _by_row_then_value(row[junk], col[junk], value[junk], num_rows)
    match_vals, slot = _pad(m_row, m_val, n_m, num_rows)
    junk_vals, _ = _pad(r_row, r_val, n_r, num_rows)
    junk_cols, _ = _pad(r_row, r_col, n_r, num_rows, fill=num_g)

    def count(sorted_seq: torch.Tensor, right: bool) -> torch.Tensor:
        return torch.searchsorted(sorted_seq, match_vals, right=right)[m_row, slot]

    le_all, lt_all = count(sorted_dist, True), count(sorted_dist, False)
    le_junk = torch.minimum(count(junk_vals, True), n_r[m_row])
    lt_junk = count(junk_vals, False)
    le_match = torch.minimum(count(match_vals, True), n_m[m_row])

    precision = le_match.double() / (le_all - le_junk).double()
    ap = torch.zeros(num_rows, dtype=torch.float64, device=device).index_add_(0, m_row, precision)
    ap = ap / n_m.clamp(min=1).double()

    is_first = slot == 0
    is_last = slot == n_m[m_row] - 1
    position = lt_all - lt_junk
    tied = (is_first | is_last) & (le_all - lt_all > 1)
    if bool(tied.any()):
        idx = tied.nonzero(as_tuple=True)[0]
        position[idx] += _valid_ties_before(
            distance, junk_vals, junk_cols, m_row[idx], m_col[idx], m_val[idx]
        )
    first = torch.zeros(num_rows, dtype=torch.int64, device=device)
    last = torch.zeros(num_rows, dtype=torch.int64, device=device)
    first[m_row[is_first]] = position[is_first]
    last[m_row[is_last]] = position[is_last]
    return ap, first, last, n_m


def _by_row_then_value(
    row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort sparse entries by (row, value, col) and count entries per row."""
    order = torch.sort(value, stable=True).indices  # input is already in (row, col) order
    row, col, value = row[order], col[order], value[order]
    order = torch.sort(row, stable=True).indices
    row, col, value = row[order], col[order], value[order]
    return row, col, value, torch.bincount(row, minlength=num_rows)


def _pad(
    row: torch.Tensor, data: torch.Tensor, counts: torch.Tensor, num_rows: int, fill=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter row-grouped sparse entries into a [rows, max count] matrix padded with ``fill``."""
    width = max(1, int(counts.max())) if counts.numel() else 1
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(row.numel(), device=row.device) - start[row]
    if fill is None:
        fill = float("inf")
    out = torch.full((num_rows, width), fill, dtype=data.dtype, device=data.device)
    out[row, slot] = data
    return out.contiguous(), slot


def _valid_ties_before(
    distance: torch.Tensor,
    junk_vals: torch.Tensor,
    junk_cols: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    value: torch.Tensor,
) -> torch.Tensor:
    """For each (row, col, value): valid gallery items at exactly ``value`` with a smaller index."""
    num_g = distance.shape[1]
    cols = torch.arange(num_g, device=distance.device)
    out = torch.empty_like(row)
    step = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    for s in range(0, row.numel(), step):
        r, c, v = row[s : s + step], col[s : s + step], value[s : s + step]
        before = ((distance[r] == v[:, None]) & (cols[None, :] < c[:, None])).sum(1)
        junk_before = ((junk_vals[r] == v[:, None]) & (junk_cols[r] < c[:, None])).sum(1)
        out[s : s + step] = before - junk_before
    return out


def _as_distance_tensor(distmat: ArrayLike) -> torch.Tensor:
    """A 2-D floating tensor sharing memory with the input where possible."""
    if isinstance(distmat, torch.Tensor):
        distance = distmat.detach()
    else:
        arr = np.asarray(distmat)
        distance = torch.from_numpy(np.ascontiguousarray(arr))
    if distance.dim() != 2:
        raise DsglError(f"the distance matrix must be 2-D (queries x gallery), got shape {tuple(distance.shape)}")
    if not distance.is_floating_point():
        distance = distance.double()  # integer distances: exact in float64
    elif distance.dtype in (torch.float16, torch.bfloat16):
        distance = distance.float()
    return distance.contiguous()


def _as_id_tensor(ids: ArrayLike, name: str, length: int, device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of ids on ``device``, checked against the matrix size."""
    if isinstance(ids, torch.Tensor):
        t = ids.detach()
    else:
        t = torch.from_numpy(np.asarray(ids).astype(np.int64, copy=False))
    t = t.reshape(-1).to(device=device, dtype=torch.int64)
    if t.numel() != length:
        raise DsglError(
            f"{name} has {t.numel()} entries but the distance matrix needs {length}; "
            "pass ids in the same order as the matrix rows/columns"
        )
    return t

