"""The L_kl tables D_k (method.md 5.3) as coefficients over P and the batch's vectors, on the host.

For order k, anchors in batch order move row t_i towards their m+ vector and each negative row c
towards its group mean: `D[r] <- normalize(a D[r] + b v)`. An update reads only its own row, so rows
evolve independently and only the order *within* a row matters; and every vector belongs to one
cluster and only ever moves that cluster's row. A row therefore stays in span{P[r], its own
vectors}, and the recurrence runs on a few coefficients per row (float64) from dot products:
D_k[r] = c0 P[r] + sum_j cv_j V_j. The sequential part is ~16-22 steps on tiny NumPy arrays
(0.6 ms per batch at Market size, where the earlier torch version over all n vectors per row took
1.2 ms; on a GPU it also saves ~150 kernel launches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KLEvents:
    """Per (order, touched row) event sequences, in local vector indices."""

    rows: np.ndarray        # U, the touched rows of D (sorted cluster ids)
    own: np.ndarray         # U x m, global ids of each row's own vectors, padded with n
    event: np.ndarray       # (K*U) x S, local vector index of each step, m = "no event"
    keep: np.ndarray        # (K*U) x S, a of each step (1 for padding)
    mix: np.ndarray         # (K*U) x S, b of each step (0 for padding)
    num_orders: int
    num_vectors: int

    def own_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(i, j), i != j, of every two vectors that belong to the same touched row (each pair once)."""
        first, second = np.triu_indices(self.own.shape[1], 1)
        i, j = self.own[:, first].reshape(-1), self.own[:, second].reshape(-1)
        valid = j < self.num_vectors                     # padding sorts last in every row
        return i[valid], j[valid]

    def rows_other_than(self, values: np.ndarray) -> np.ndarray:
        """The touched rows that are not in `values` (a subset of them)."""
        keep = np.ones(self.rows.size, dtype=bool)
        keep[np.searchsorted(self.rows, values)] = False
        return self.rows[keep]


def group_ranks(keys: np.ndarray) -> np.ndarray:
    """Rank of each entry among the entries with the same key, in their order of appearance."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    ranks = np.empty_like(order)
    ranks[order] = np.arange(keys.size) - np.searchsorted(sorted_keys, sorted_keys, side="left")
    return ranks


def kl_events(targets: np.ndarray, pair_of: np.ndarray, neg_mask: np.ndarray, vec_cluster: np.ndarray,
              tau_re: float, tau1_re: float) -> KLEvents:
    """Event sequences of every (order k, touched row) pair (method.md 5.3).

    `pair_of` (B x K) is anchor i's m+ vector for order k; vectors n_pairs.. are the negative groups,
    `neg_mask` (K x B x G) says which ones anchor i moves for order k; `vec_cluster` (n) is each
    vector's cluster.
    """
    K, B, G = neg_mask.shape
    n = vec_cluster.size
    n_pairs = n - G
    # event grid over (order k, anchor i, slot j): slot 0 moves row t_i towards its m+, slot 1+g
    # moves row c_g towards group g; flatnonzero walks it in batch order within each order
    touch = np.concatenate([np.ones((K, B, 1), dtype=bool), neg_mask], 2)
    row_tab = np.concatenate([np.broadcast_to(targets.reshape(1, B, 1), (K, B, 1)),
                              np.broadcast_to(vec_cluster[n_pairs:].reshape(1, 1, G), (K, B, G))], 2)
    vec_tab = np.concatenate([pair_of.T.reshape(K, B, 1),
                              np.broadcast_to(np.arange(n_pairs, n).reshape(1, 1, G), (K, B, G))], 2)
    flat = np.flatnonzero(touch)
    ev_k = flat // (B * (G + 1))
    ev_vec = vec_tab.reshape(-1)[flat]
    rows, ev_row = np.unique(row_tab.reshape(-1)[flat], return_inverse=True)
    U = rows.size
    # each vector's local index among its cluster's vectors, and every touched row's own vectors
    local = group_ranks(vec_cluster)
    m = int(local.max()) + 1
    own = np.full((U, m), n, dtype=np.int64)
    in_rows = np.searchsorted(rows, vec_cluster)
    found = (in_rows < U) & (rows[np.minimum(in_rows, U - 1)] == vec_cluster)
    own[in_rows[found], local[found]] = np.flatnonzero(found)
    # one sequence per (order, row); the stable ranks keep batch order inside each
    seq = ev_k * U + ev_row
    step = group_ranks(seq)
    S = int(step.max()) + 1
    event = np.full((K * U, S), m, dtype=np.int64)
    event[seq, step] = local[ev_vec]
    positive = ev_vec < n_pairs
    keep = np.ones((K * U, S))
    mix = np.zeros((K * U, S))
    keep[seq, step] = np.where(positive, 1.0 - tau_re, 1.0 - tau1_re)
    mix[seq, step] = np.where(positive, tau_re, tau1_re)
    return KLEvents(rows=rows, own=own, event=event, keep=keep, mix=mix, num_orders=K, num_vectors=n)


def kl_coefficients(ev: KLEvents, gram: np.ndarray, own_dot: np.ndarray,
                    start_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c0 (K x U), cv (K x U x n)) with D_k[rows] = c0 P[rows] + cv @ V, all float64.

    `gram` is V.V^T (n x n; only entries of two vectors of the same row are read),
    `own_dot[j]` = P[cluster of j].V_j, `start_sq[u]` = |P[rows[u]]|^2.
    Row state z = [row.V_own (m) | cv_own (m) | c0]; an event (a, b, local l) gives
    z <- (a z + b [G_own[l] | onehot(l) | 0]) / |a row + b V_l|, with
    |a row + b V_l|^2 = a^2 |row|^2 + b^2 |V_l|^2 + 2ab row.V_l and |row| = 1 after its first event.
    """
    K, n = ev.num_orders, ev.num_vectors
    U, m = ev.own.shape
    width = 2 * m + 1
    gram_pad = np.zeros((n + 1, n + 1))
    gram_pad[:n, :n] = gram
    dot_pad = np.append(own_dot, 0.0)
    # per row: [G_own[l] | onehot(l) | 0] for l = 0..m (l = m is the null "no event" vector)
    own_pad = np.concatenate([ev.own, np.full((U, 1), n)], 1)
    step_rows = np.zeros((U, m + 1, width))
    step_rows[:, :, :m] = gram_pad[own_pad[:, :, None], ev.own[:, None, :]]
    step_rows[:, np.arange(m), m + np.arange(m)] = 1.0
    z = np.zeros((K * U, width))
    z[:, :m] = np.tile(dot_pad[ev.own], (K, 1))
    z[:, -1] = 1.0
    # per-step constants, all computed before the sequential loop; a padding step (b = 0) reads
    # column m of z, which its zero cross term ignores
    lanes = np.arange(K * U)
    a, b, e = ev.keep, ev.mix, ev.event
    table_row = np.tile(np.arange(U) * (m + 1), K)[:, None] + e
    flat_rows = step_rows.reshape(U * (m + 1), width)
    self_sq = flat_rows[table_row, e.clip(max=m - 1)]     # |V_l|^2; the null row is all zeros
    const = a * a + b * b * self_sq
    const[:, 0] += np.where(b[:, 0] > 0, a[:, 0] ** 2 * (np.tile(start_sq, K) - 1.0), 0.0)
    cross = 2 * a * b
    dot_at = (lanes[:, None] * width + e).T.copy()
    steps = zip(dot_at, const.T.copy(), cross.T.copy(), a.T.copy(), b.T.copy(), table_row.T.copy())
    for at, const_s, cross_s, a_s, b_s, row_s in steps:
        norm = np.sqrt(const_s + cross_s * z.take(at))
        z *= (a_s / norm)[:, None]
        z += (b_s / norm)[:, None] * flat_rows.take(row_s, axis=0)
    c0 = z[:, -1].reshape(K, U)
    cv = np.zeros((K * U, n + 1))
    cv[lanes[:, None], np.tile(ev.own, (K, 1))] = z[:, m : 2 * m]
    return c0, cv[:, :n].reshape(K, U, n)
