"""The batch plan of one DSGL step: every prototype the batch's losses need, without N-sized work.

The per-anchor means over S+ / S- (method.md 5.2-5.3) run over all N images; they are unions of
*irrelevant groups* g = (cluster y_n, irrelevant label a_n^0), so the memory keeps each group's sum
of instance-memory rows and the plan combines a few of them. Which groups, pairs and events a batch
involves is integer bookkeeping on a few hundred entries, done in NumPy on the host; everything
d-wide (group sums, prototypes, dot products) stays on the device. The plan feeds `losses.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dsgl_cli.method.kl_tables import KLEvents, kl_coefficients, kl_events
from dsgl_cli.method.losses import LossPlan

if TYPE_CHECKING:
    from dsgl_cli.method.memory import DSGLMemory


@dataclass
class PlanDetails:
    """Intermediate prototypes of a plan, for `DSGLMemory.losses(details=True)` and the parity tests."""

    vectors: Tensor                       # the L_kl vectors V = [m+ of pass 1; negatives of pass 1]
    positives: tuple[Tensor, Tensor]      # m+ per distinct (t, a) pair, L_dis pass 0 and pass 1
    pair_of: Tensor                       # B x K, each anchor's pair index per irrelevant-label order


class IrrelevantGroups:
    """Images grouped by (pseudo label, column-0 irrelevant label) with running sums of I (method.md 5.2).

    The sums live on the memory's device; the small integer tables that say which groups a batch
    needs are kept on the host as NumPy arrays, where a step's index bookkeeping is cheapest.
    """

    def __init__(self, labels: Tensor, irre0: Tensor, instance: Tensor, num_clusters: int) -> None:
        C = num_clusters
        clustered = labels >= 0
        rows = torch.nonzero(clustered).view(-1)
        keys = labels[rows] * C + irre0[rows]
        ukeys, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        self.sum = torch.zeros(ukeys.numel(), instance.shape[1], dtype=instance.dtype,
                               device=instance.device).index_add_(0, inverse, instance[rows])
        # host tables: each image's group (-1 for outliers); groups are sorted by key, hence by
        # cluster; `by_irre` lists them by (irrelevant label, cluster); *_start are CSR offsets
        ukeys_h = ukeys.cpu().numpy()
        self.group_of_h = np.full(labels.numel(), -1, dtype=np.int64)
        self.group_of_h[rows.cpu().numpy()] = inverse.cpu().numpy()
        self.cluster_h = ukeys_h // C
        self.irre_h = ukeys_h % C
        self.count_h = counts.cpu().numpy()
        self.by_irre_h = np.argsort(self.irre_h * C + self.cluster_h, kind="stable")
        self.cluster_start = np.searchsorted(self.cluster_h, np.arange(C + 1))
        self.irre_start = np.searchsorted(self.irre_h[self.by_irre_h], np.arange(C + 1))

    def to(self, device: torch.device) -> "IrrelevantGroups":
        """Move the group sums (the only device tensor) to `device`."""
        self.sum = self.sum.to(device)
        return self

    def of_clusters(self, clusters: np.ndarray) -> np.ndarray:
        """Ids of every group of the given (distinct) clusters, grouped by cluster."""
        return _ranges(self.cluster_start, clusters)

    def with_irrelevant(self, values: np.ndarray) -> np.ndarray:
        """Ids of every group whose irrelevant label is one of the (distinct) `values`, by (label, cluster)."""
        return self.by_irre_h[_ranges(self.irre_start, values)]


def _ranges(starts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[k], starts[k + 1]) over `keys`, without a Python loop."""
    lo, hi = starts[keys], starts[keys + 1]
    sizes = hi - lo
    return np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))


def last_positions(keys: np.ndarray) -> np.ndarray:
    """Ascending positions of the entries of `keys` that no later entry repeats ("last one wins")."""
    first_from_end = np.unique(keys[::-1], return_index=True)[1]
    return np.sort(keys.size - 1 - first_from_end)


def to_device(x: np.ndarray, device: torch.device, dtype: torch.dtype = torch.long) -> Tensor:
    """A host array as a tensor on `device` (no copy on the CPU when the dtype already matches)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _dot_products(events: KLEvents, vectors: Tensor, P: Tensor, rows: Tensor, vec_cluster: Tensor,
                  neg_sum0: Tensor) -> tuple[np.ndarray, ...]:
    """Host float64 inputs of the L_kl recurrence and the pass-0 negative norms, from one transfer.

    The recurrence reads V_i.V_j only for two vectors of the same cluster, so instead of the whole
    Gram matrix this takes |V_j|^2 and those pairs; also P[cluster of j].V_j and |P[rows]|^2.
    """
    pair_i, pair_j = events.own_pairs()
    device = vectors.device
    start = P.index_select(0, rows)
    left, right = vectors.index_select(0, to_device(pair_i, device)), vectors.index_select(0, to_device(pair_j, device))
    parts = ((vectors * vectors).sum(dim=1),
             (left * right).sum(dim=1),
             (P.index_select(0, vec_cluster) * vectors).sum(dim=1),
             (start * start).sum(dim=1),
             torch.linalg.vector_norm(neg_sum0, dim=1))
    sq, pair_dots, own_dot, start_sq, neg0_norm = (x.double().cpu().numpy() for x in parts)
    n = sq.size
    gram = np.zeros((n, n))
    gram[np.arange(n), np.arange(n)] = sq
    gram[pair_i, pair_j] = gram[pair_j, pair_i] = pair_dots
    return gram, own_dot, start_sq, neg0_norm


def _side_map(L: int, n_pairs: int, hit_share: np.ndarray, neg_norms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Scores of [Q pass 0, Q pass 1 | negatives normalised, pass 0, pass 1 | V] from side rows [Q | V | deltas].

    Negative group g after the write is V's row n_pairs + g; before it, that minus
    sum_w hit_share[g, w] delta_w (hit_share = written into g / group size); each is then divided
    by its norm (`neg_norms`, F.normalize's 1e-12 floor applied).
    """
    G, W = hit_share.shape
    n = n_pairs + G
    out = np.zeros((2 * L + n + W, 2 * L + 2 * G + n))
    out[np.arange(2 * L), np.arange(2 * L)] = 1.0
    neg_rows = 2 * L + n_pairs + np.arange(G)
    out[neg_rows, 2 * L + np.arange(G)] = 1.0 / neg_norms[0]
    out[2 * L + n:, 2 * L : 2 * L + G] = -(hit_share / neg_norms[0][:, None]).T
    out[neg_rows, 2 * L + G + np.arange(G)] = 1.0 / neg_norms[1]
    out[2 * L + np.arange(n), 2 * L + 2 * G + np.arange(n)] = 1.0
    return out


@torch.no_grad()
def plan_batch(memory: DSGLMemory, f: Tensor, idx: Tensor, targets: Tensor, irre: Tensor
           ) -> tuple[LossPlan, PlanDetails]:
    """Every prototype the batch's losses need, from group sums (no N-sized work, no gradient).

    Which groups, pairs and events a batch involves is integer bookkeeping on a few hundred
    entries: it runs in NumPy on the host (one small copy of the batch's labels; a sync on
    CUDA). Everything d-wide (group sums, prototypes, dot products) stays on the device.
    """
    C, gr, P, device = memory.num_clusters, memory.irrelevant_groups, memory.mean_prototypes, memory.device
    B, K = irre.shape
    idx_h, t_h, irre_h = (x.cpu().numpy() for x in (idx, targets, irre))

    # S+ groups (the batch's clusters) and S- groups (carrying one of the batch's irrelevant labels)
    pos_groups = gr.of_clusters(np.unique(t_h))
    neg_groups = gr.with_irrelevant(np.unique(irre_h))
    # m+ per distinct (t, a) pair of pass 0 and pass 1, and the write's per-group deltas
    pairs, pair_of = np.unique(t_h[:, None] * C + irre_h, return_inverse=True)
    pair_of = pair_of.reshape(B, K)
    p_t = pairs // C
    n_pairs = pairs.size
    pos, delta, written = _positive_means(memory, f, idx_h, pairs, pos_groups)
    pos0, pos1 = pos[:n_pairs], pos[n_pairs:]
    # S- of anchor i for order k: groups (c, a_i^k) with c != t_i, one prototype per group
    n_cluster = gr.cluster_h[neg_groups]
    neg_mask_h = ((gr.irre_h[neg_groups][None, None, :] == irre_h.T[:, :, None])
                  & (n_cluster[None, None, :] != t_h[None, :, None]))
    G = neg_groups.size
    # columns of Q that differ from P: the batch's clusters, each with the m+ of its last anchor
    last = last_positions(t_h)
    q_cols_h = t_h[last]
    L = q_cols_h.size
    q_cols, q_pair = to_device(q_cols_h, device), to_device(pair_of[last, 0], device)
    side, neg_sum0 = _side_rows(memory, q_cols, q_pair, pos0, pos1, neg_groups, written, delta)
    vectors = side[2 * L : 2 * L + n_pairs + G]
    neg_hit = neg_groups[:, None] == written[None, :]
    n_count = gr.count_h[neg_groups]
    # L_kl tables (5.3): event sequences on the host, dot products on the device, recurrence on the host
    vec_cluster = np.concatenate([p_t, n_cluster])
    events = kl_events(t_h, pair_of, neg_mask_h, vec_cluster, memory.tau_re, memory.tau1_re)
    rows = to_device(events.rows, device)
    gram_h, own_dot_h, start_sq_h, neg0_norm_h = _dot_products(
        events, vectors, P, rows, to_device(vec_cluster, device), neg_sum0)
    c0, cv = kl_coefficients(events, gram_h, own_dot_h, start_sq_h)
    neg1_norm_h = np.sqrt(np.diagonal(gram_h)[n_pairs:])
    neg_norms = (np.maximum(neg0_norm_h / n_count, 1e-12), np.maximum(neg1_norm_h, 1e-12))
    side_map = _side_map(L, n_pairs, neg_hit / n_count[:, None], neg_norms)
    by_value = np.argsort(q_cols_h)
    target_slot = by_value[np.searchsorted(q_cols_h, t_h, sorter=by_value)]
    plan = LossPlan(targets=targets, fallback_cols=irre[:, :1].contiguous(), side=side,
                    side_map=to_device(side_map, device, f.dtype), q_cols=q_cols,
                    target_slot=to_device(target_slot, device), neg_mask=to_device(neg_mask_h[0], device, torch.bool),
                    kl_rows=rows,
                    kl_c0=to_device(c0, device, f.dtype), kl_cv=to_device(cv, device, f.dtype),
                    other_rows=to_device(events.rows_other_than(q_cols_h), device),
                    temp=memory.fixed_temp, tau_dis=memory.tau_dis, temp_m=memory.temp, smooth=memory.smooth)
    return plan, PlanDetails(vectors=vectors, positives=(pos0, pos1), pair_of=to_device(pair_of, device))

def _side_rows(memory: DSGLMemory, q_cols: Tensor, q_pair: Tensor, pos0: Tensor, pos1: Tensor,
           neg_groups: np.ndarray, written: np.ndarray, delta: Tensor) -> tuple[Tensor, Tensor]:
    """(side rows, pass-0 sums of the negative groups); see `LossPlan` and `_side_map`.

    side = [Q rows pass 0 | pass 1 (normalised) | V = [m+ pass 1; negatives pass 1] | deltas];
    Q[t] = (1-tau) P[t] + tau m+, with m+ of the cluster's last anchor in the batch. The
    normalised negatives of both passes are combinations of V's negatives and the deltas.
    """
    gr, P, device = memory.irrelevant_groups, memory.mean_prototypes, memory.device
    L, n_pairs, G, W = q_cols.numel(), pos1.shape[0], neg_groups.size, written.size
    n = n_pairs + G
    side = torch.empty(2 * L + n + W, pos1.shape[1], dtype=pos1.dtype, device=device)
    p_q = (1 - memory.tau_dis) * P.index_select(0, q_cols)
    for half, m_plus in enumerate((pos0, pos1)):
        q = torch.add(p_q, m_plus.index_select(0, q_pair), alpha=memory.tau_dis)
        torch.div(q, torch.linalg.vector_norm(q, dim=1, keepdim=True), out=side[half * L : (half + 1) * L])
    side[2 * L : 2 * L + n_pairs] = pos1
    neg_sum0 = torch.index_select(gr.sum, 0, to_device(neg_groups, device))
    neg1 = side[2 * L + n_pairs : 2 * L + n]
    torch.addmm(neg_sum0, to_device(neg_groups[:, None] == written[None, :], device, pos1.dtype), delta, out=neg1)
    neg1.div_(to_device(gr.count_h[neg_groups], device, pos1.dtype).view(-1, 1))
    side[2 * L + n :] = delta
    return side, neg_sum0

def _positive_means(memory: DSGLMemory, f: Tensor, idx_h: np.ndarray, pairs: np.ndarray,
                pos_groups: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
    """(m+ of every (t, a) pair, pass 0 then pass 1; per-group write deltas; written group ids).

    The virtual write I[idx] = f (last duplicate wins) changes a few group sums by `delta`.
    m+ of pair (t, a) is the mean over the cluster's groups whose irrelevant label is not a, or
    P[t] when there are none: one matmul [share 0 P; share share.hit P] @ [sums; deltas; P rows].
    """
    C, gr, P, device = memory.num_clusters, memory.irrelevant_groups, memory.mean_prototypes, memory.device
    keep = last_positions(idx_h)
    written, slot = np.unique(np.asarray(gr.group_of_h[idx_h[keep]]), return_inverse=True)
    p_t, p_a = pairs // C, pairs % C
    n_pairs = pairs.size
    member = (gr.cluster_h[pos_groups] == p_t[:, None]) & (gr.irre_h[pos_groups] != p_a[:, None])
    count = member.astype(np.int64) @ gr.count_h[pos_groups]
    empties = np.flatnonzero(count == 0)
    Gp, W, E = pos_groups.size, written.size, empties.size
    base = torch.zeros(Gp + W + E, f.shape[1], dtype=f.dtype, device=device)
    torch.index_select(gr.sum, 0, to_device(pos_groups, device), out=base[:Gp])
    rows_w = memory.instance.index_select(0, to_device(idx_h[keep], device))
    base[Gp : Gp + W].index_add_(0, to_device(slot, device), f.index_select(0, to_device(keep, device)) - rows_w)
    if E:
        torch.index_select(P, 0, to_device(p_t[empties], device), out=base[Gp + W :])
    share = member / np.maximum(count, 1)[:, None]
    mix = np.zeros((2 * n_pairs, Gp + W + E), dtype=np.float32)
    mix[:n_pairs, :Gp] = mix[n_pairs:, :Gp] = share
    mix[n_pairs:, Gp : Gp + W] = share @ (pos_groups[:, None] == written[None, :])
    mix[empties, Gp + W + np.arange(E)] = mix[n_pairs + empties, Gp + W + np.arange(E)] = 1.0
    return to_device(mix, device, f.dtype) @ base, base[Gp : Gp + W], written
