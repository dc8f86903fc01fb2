"""DSGL per-iteration memory: hybrid cluster memory (hard H + mean P), instance memory I (method.md 4.5-5).

`losses()` is a pure function of the state and the batch; `update()` is the explicit memory step
after `optimizer.step()`. The per-anchor means over S+ / S- (method.md 5.2-5.3) run over all N
images; they are unions of *irrelevant groups* g = (cluster y_n, irrelevant label a_n^0), so the
memory keeps each group's sum of instance-memory rows (built once per epoch, kept current by the
delta of the rows `update()` writes) and never scans N per anchor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dsgl_cli.method.kl_tables import KLEvents, kl_coefficients, kl_events
from dsgl_cli.method.losses import DSGLLossFunction, LossPlan, cluster_memory_loss
from dsgl_cli.errors import DsglError

MODES = ("DLhybrid", "CM", "CMhard")


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


def _to(x: np.ndarray, device: torch.device, dtype: torch.dtype = torch.long) -> Tensor:
    """A host array as a tensor on `device` (no copy on the CPU when the dtype already matches)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _dot_products(events: KLEvents, vectors: Tensor, P: Tensor, rows: Tensor, vec_cluster: Tensor,
                  neg_sum0: Tensor) -> tuple[np.ndarray, ...]:
    """Host float64 inputs of the L_kl recurrence and the pass-0 negative norms, from one transfer.

    The recurrence reads V_i.V_j only for two vectors of the same cluster, so instead of the whole
    Gram matrix this takes |V_j|^2 and those pairs; also P[cluster of j].V_j and |P[rows]|^2.
    """
    pair_i, pair_j = events.own_pairs()
    dev = vectors.device
    start = P.index_select(0, rows)
    parts = ((vectors * vectors).sum(dim=1),
             (vectors.index_select(0, _to(pair_i, dev)) * vectors.index_select(0, _to(pair_j, dev))).sum(dim=1),
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


class DSGLMemory:
    """Hybrid cluster memory (hard half H, mean half P), instance memory I and per-epoch labels."""

    def __init__(self, features: Tensor, pseudo_labels: Tensor, irrelevant: Tensor | None,
                 centroids: Tensor, mode: str = "DLhybrid", temp: float = 0.05,
                 momentum: float = 0.1, tau_dis: float = 0.5, tau_re: float = 0.8,
                 tau1_re: float = 0.1) -> None:
        if mode not in MODES:
            raise DsglError(f"--memorybank: '{mode}' is not one of {', '.join(MODES)}", exit_code=2)
        N, d = features.shape
        C = centroids.shape[0]
        if pseudo_labels.shape != (N,) or centroids.shape[1] != d or C == 0:
            raise DsglError(
                f"memory: features {tuple(features.shape)}, labels {tuple(pseudo_labels.shape)} and "
                f"centroids {tuple(centroids.shape)} do not fit together; rebuild the epoch's clusters"
            )
        device = features.device
        self.mode = mode
        self.temp, self.momentum = float(temp), float(momentum)
        self.tau_dis, self.tau_re, self.tau1_re = float(tau_dis), float(tau_re), float(tau1_re)
        self.num_clusters = C
        self.device = device
        self.labels = pseudo_labels.to(device=device, dtype=torch.long)
        self.instance = features.detach().to(device=device, dtype=torch.float32, copy=True)
        protos = F.normalize(centroids.detach().to(device=device, dtype=torch.float32), dim=1)
        self.bank = torch.cat([protos, protos], 0) if mode == "DLhybrid" else protos.clone()
        self.irrelevant: Tensor | None = None
        self.groups: IrrelevantGroups | None = None
        if mode == "DLhybrid":
            if irrelevant is None or irrelevant.shape[0] != N or irrelevant.dim() != 2:
                raise DsglError("DLhybrid memory needs an N x k table of identity-irrelevant labels")
            self.irrelevant = irrelevant.to(device=device, dtype=torch.long)
            clustered = self.irrelevant[self.labels >= 0]
            if clustered.numel() and (int(clustered.min()) < 0 or int(clustered.max()) >= C):
                raise DsglError(
                    "DLhybrid memory: a clustered image has no identity-irrelevant label "
                    f"(needs at least {self.irrelevant.shape[1] + 1} clusters); lower --eps or use --memorybank CM"
                )
            self.groups = IrrelevantGroups(self.labels, self.irrelevant[:, 0], self.instance, C)

    # ------------------------------------------------------------------ state
    @property
    def hard_prototypes(self) -> Tensor:
        """Hard prototypes H (C x d); for CM modes the single prototype table."""
        return self.bank[: self.num_clusters]

    @property
    def mean_prototypes(self) -> Tensor:
        """Mean prototypes P (C x d); for CM modes the single prototype table."""
        return self.bank[self.num_clusters:] if self.mode == "DLhybrid" else self.bank

    def to(self, device: torch.device | str) -> "DSGLMemory":
        """Move the whole memory (bank, instance memory, labels, group sums) to `device`."""
        device = torch.device(device)
        self.device = device
        self.labels = self.labels.to(device)
        self.instance = self.instance.to(device)
        self.bank = self.bank.to(device)
        if self.irrelevant is not None:
            self.irrelevant = self.irrelevant.to(device)
        if self.groups is not None:
            self.groups.to(device)
        return self

    # ----------------------------------------------------------------- losses
    def losses(self, f: Tensor, idx: Tensor, targets: Tensor, irre: Tensor | None,
               f_hat: Tensor | None, details: bool = False) -> dict[str, Tensor]:
        """{'loss_m','loss_dis','loss_kl'} and their parts, as a pure function of state and batch.

        Also returns 'loss_dis_pass0/1' (the L_dis passes before / after the write I[idx] = f) and
        'loss_kl_k0/1' (one per irrelevant-label order). loss_dis / loss_kl are constant zeros in CM
        modes. With `details=True` it adds the positive prototypes m+ of both L_dis passes
        ('dis_pos_proto0/1', B x d) and the full L_kl tables ('re_dist_proto_k0/1', C x d).
        """
        C, T = self.num_clusters, self.temp
        targets = targets.to(self.device)
        if self.mode != "DLhybrid":
            zero = torch.zeros((), dtype=f.dtype, device=f.device)
            loss_m = cluster_memory_loss(f @ self.bank.t() / T, targets)
            return {"loss_m": loss_m, "loss_dis": zero, "loss_kl": zero}
        if f_hat is None:
            raise DsglError("DLhybrid memory needs the partner embeddings f_hat for L_kl")
        idx = idx.to(self.device)
        irre = self.irrelevant[idx] if irre is None else irre.to(self.device)
        plan, extra = self._plan(f.detach().float(), idx, targets, irre)
        loss_m, passes, kls = DSGLLossFunction.apply(f, f_hat, self.bank, plan)
        out: dict[str, Tensor] = {"loss_m": loss_m, "loss_dis": passes.mean(), "loss_kl": kls.mean(),
                                  "loss_dis_pass0": passes[0], "loss_dis_pass1": passes[1]}
        for k in range(kls.numel()):
            out[f"loss_kl_k{k}"] = kls[k]
        if details:
            P = self.mean_prototypes
            for k in range(kls.numel()):
                table_rows = plan.kl_c0[k].view(-1, 1) * P[plan.kl_rows] + plan.kl_cv[k] @ extra["vectors"]
                out[f"re_dist_proto_k{k}"] = P.index_copy(0, plan.kl_rows, table_rows)
            first = extra["pair_of"][:, 0]
            out["dis_pos_proto0"], out["dis_pos_proto1"] = (m[first] for m in extra["pos"])
        return out

    @torch.no_grad()
    def _plan(self, f: Tensor, idx: Tensor, targets: Tensor, irre: Tensor) -> tuple[LossPlan, dict]:
        """Every prototype the batch's losses need, from group sums (no N-sized work, no gradient).

        Which groups, pairs and events a batch involves is integer bookkeeping on a few hundred
        entries: it runs in NumPy on the host (one small copy of the batch's labels; a sync on
        CUDA). Everything d-wide (group sums, prototypes, dot products) stays on the device.
        """
        C, gr, P, dev = self.num_clusters, self.groups, self.mean_prototypes, self.device
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
        pos, delta, written = self._positive_means(f, idx_h, pairs, pos_groups)
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
        q_cols, q_pair = _to(q_cols_h, dev), _to(pair_of[last, 0], dev)
        side, neg_sum0 = self._side_rows(q_cols, q_pair, pos0, pos1, neg_groups, written, delta)
        vectors = side[2 * L : 2 * L + n_pairs + G]
        neg_hit = neg_groups[:, None] == written[None, :]
        n_count = gr.count_h[neg_groups]
        # L_kl tables (5.3): event sequences on the host, dot products on the device, recurrence on the host
        vec_cluster = np.concatenate([p_t, n_cluster])
        events = kl_events(t_h, pair_of, neg_mask_h, vec_cluster, self.tau_re, self.tau1_re)
        rows = _to(events.rows, dev)
        gram_h, own_dot_h, start_sq_h, neg0_norm_h = _dot_products(
            events, vectors, P, rows, _to(vec_cluster, dev), neg_sum0)
        c0, cv = kl_coefficients(events, gram_h, own_dot_h, start_sq_h)
        neg1_norm_h = np.sqrt(np.diagonal(gram_h)[n_pairs:])
        neg_norms = (np.maximum(neg0_norm_h / n_count, 1e-12), np.maximum(neg1_norm_h, 1e-12))
        side_map = _side_map(L, n_pairs, neg_hit / n_count[:, None], neg_norms)
        by_value = np.argsort(q_cols_h)
        target_slot = by_value[np.searchsorted(q_cols_h, t_h, sorter=by_value)]
        plan = LossPlan(targets=targets, fallback_cols=irre[:, :1].contiguous(), side=side,
                        side_map=_to(side_map, dev, f.dtype), q_cols=q_cols,
                        target_slot=_to(target_slot, dev), neg_mask=_to(neg_mask_h[0], dev, torch.bool), kl_rows=rows,
                        kl_c0=_to(c0, dev, f.dtype), kl_cv=_to(cv, dev, f.dtype),
                        other_rows=_to(events.rows_other_than(q_cols_h), dev),
                        temp=self.temp, tau_dis=self.tau_dis)
        return plan, {"vectors": vectors, "pos": (pos0, pos1), "pair_of": _to(pair_of, dev)}

    def _side_rows(self, q_cols: Tensor, q_pair: Tensor, pos0: Tensor, pos1: Tensor, neg_groups: np.ndarray,
                   written: np.ndarray, delta: Tensor) -> tuple[Tensor, Tensor]:
        """(side rows, pass-0 sums of the negative groups); see `LossPlan` and `_side_map`.

        side = [Q rows pass 0 | pass 1 (normalised) | V = [m+ pass 1; negatives pass 1] | deltas];
        Q[t] = (1-tau) P[t] + tau m+, with m+ of the cluster's last anchor in the batch. The
        normalised negatives of both passes are combinations of V's negatives and the deltas.
        """
        gr, P, dev = self.groups, self.mean_prototypes, self.device
        L, n_pairs, G, W = q_cols.numel(), pos1.shape[0], neg_groups.size, written.size
        n = n_pairs + G
        side = torch.empty(2 * L + n + W, pos1.shape[1], dtype=pos1.dtype, device=dev)
        p_q = (1 - self.tau_dis) * P.index_select(0, q_cols)
        for half, m_plus in enumerate((pos0, pos1)):
            q = torch.add(p_q, m_plus.index_select(0, q_pair), alpha=self.tau_dis)
            torch.div(q, torch.linalg.vector_norm(q, dim=1, keepdim=True), out=side[half * L : (half + 1) * L])
        side[2 * L : 2 * L + n_pairs] = pos1
        neg_sum0 = torch.index_select(gr.sum, 0, _to(neg_groups, dev))
        neg1 = side[2 * L + n_pairs : 2 * L + n]
        torch.addmm(neg_sum0, _to(neg_groups[:, None] == written[None, :], dev, pos1.dtype), delta, out=neg1)
        neg1.div_(_to(gr.count_h[neg_groups], dev, pos1.dtype).view(-1, 1))
        side[2 * L + n :] = delta
        return side, neg_sum0

    def _positive_means(self, f: Tensor, idx_h: np.ndarray, pairs: np.ndarray,
                        pos_groups: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
        """(m+ of every (t, a) pair, pass 0 then pass 1; per-group write deltas; written group ids).

        The virtual write I[idx] = f (last duplicate wins) changes a few group sums by `delta`.
        m+ of pair (t, a) is the mean over the cluster's groups whose irrelevant label is not a, or
        P[t] when there are none: one matmul [share 0 P; share share.hit P] @ [sums; deltas; P rows].
        """
        C, gr, P, dev = self.num_clusters, self.groups, self.mean_prototypes, self.device
        keep = last_positions(idx_h)
        written, slot = np.unique(gr.group_of_h[idx_h[keep]], return_inverse=True)
        p_t, p_a = pairs // C, pairs % C
        n_pairs = pairs.size
        member = (gr.cluster_h[pos_groups] == p_t[:, None]) & (gr.irre_h[pos_groups] != p_a[:, None])
        count = member.astype(np.int64) @ gr.count_h[pos_groups]
        empties = np.flatnonzero(count == 0)
        Gp, W, E = pos_groups.size, written.size, empties.size
        base = torch.zeros(Gp + W + E, f.shape[1], dtype=f.dtype, device=dev)
        torch.index_select(gr.sum, 0, _to(pos_groups, dev), out=base[:Gp])
        rows_w = self.instance.index_select(0, _to(idx_h[keep], dev))
        base[Gp : Gp + W].index_add_(0, _to(slot, dev), f.index_select(0, _to(keep, dev)) - rows_w)
        if E:
            torch.index_select(P, 0, _to(p_t[empties], dev), out=base[Gp + W :])
        share = member / np.maximum(count, 1)[:, None]
        mix = np.zeros((2 * n_pairs, Gp + W + E), dtype=np.float32)
        mix[:n_pairs, :Gp] = mix[n_pairs:, :Gp] = share
        mix[n_pairs:, Gp : Gp + W] = share @ (pos_groups[:, None] == written[None, :])
        mix[empties, Gp + W + np.arange(E)] = mix[n_pairs + empties, Gp + W + np.arange(E)] = 1.0
        return _to(mix, dev, f.dtype) @ base, base[Gp : Gp + W], written

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None:
        """Prototype update (hard / mean, method.md 5.1 and 5.5) and the instance write I[idx] = f."""
        f = f.detach().to(device=self.device, dtype=self.bank.dtype)
        B, C, m, dev = f.shape[0], self.num_clusters, self.momentum, self.device
        idx_h, t_h = idx.cpu().numpy(), targets.cpu().numpy()
        clusters_h, inverse_h, counts_h = np.unique(t_h, return_inverse=True, return_counts=True)
        clusters, inverse = _to(clusters_h, dev), _to(inverse_h, dev)
        n = clusters_h.size
        if self.mode in ("DLhybrid", "CMhard"):
            # j* = the least similar sample of each cluster, first index on ties
            H = self.bank.index_select(0, clusters)
            sims = (f * H.index_select(0, inverse)).sum(dim=1).cpu().numpy()
            by_cluster = np.lexsort((np.arange(B), sims, inverse_h))
            j_star = by_cluster[np.searchsorted(inverse_h[by_cluster], np.arange(n))]
            v = m * H + (1 - m) * f.index_select(0, _to(j_star, dev))
            self.bank[clusters] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        if self.mode in ("DLhybrid", "CM"):
            rows = clusters + C if self.mode == "DLhybrid" else clusters
            means = torch.zeros(n, f.shape[1], dtype=f.dtype, device=dev).index_add_(0, inverse, f)
            means /= _to(counts_h, dev, f.dtype).view(-1, 1)
            v = m * self.bank.index_select(0, rows) + (1 - m) * means
            self.bank[rows] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        keep = last_positions(idx_h)                      # I[idx] = f, the last duplicate wins
        rows_w, f_w = _to(idx_h[keep], dev), f.index_select(0, _to(keep, dev))
        if self.groups is not None:                        # keep the group sums equal to sums of I
            gid = self.groups.group_of_h[idx_h[keep]]
            ok = _to(gid >= 0, dev, torch.bool)
            self.groups.sum.index_add_(0, _to(gid, dev)[ok], (f_w - self.instance.index_select(0, rows_w))[ok])
        self.instance[rows_w] = f_w
