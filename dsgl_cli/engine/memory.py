"""DSGL per-iteration memory: hybrid cluster memory (hard H + mean P), instance memory I (method.md 4.5-5).

`losses()` is a pure function of the state and the batch; `update()` is the explicit memory step
after `optimizer.step()`. The per-anchor means over S+ / S- (method.md 5.2-5.3) run over all N
images; they are unions of *irrelevant groups* g = (cluster y_n, irrelevant label a_n^0), so the
memory keeps each group's sum of instance-memory rows (built once per epoch, kept current by the
delta of the rows `update()` writes) and never scans N per anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dsgl_cli.engine.losses import (
    cluster_memory_loss,
    disentangled_pass_loss,
    relative_entropy_loss,
    replace_columns,
    table_row_coefficients,
)
from dsgl_cli.errors import DsglError

MODES = ("DLhybrid", "CM", "CMhard")


def last_occurrence(keys: Tensor) -> Tensor:
    """Mask of the entries of `keys` (1-D) that no later entry repeats ("last one wins")."""
    same = keys.view(-1, 1) == keys.view(1, -1)
    later = torch.ones_like(same).triu(diagonal=1)
    return ~(same & later).any(dim=1)


class IrrelevantGroups:
    """Images grouped by (pseudo label, column-0 irrelevant label) with running sums of I (method.md 5.2)."""

    def __init__(self, labels: Tensor, irre0: Tensor, instance: Tensor, num_clusters: int) -> None:
        C = num_clusters
        clustered = labels >= 0
        rows = torch.nonzero(clustered).view(-1)
        keys = labels[rows] * C + irre0[rows]
        ukeys, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        self.group_of = torch.full_like(labels, -1)
        self.group_of[rows] = inverse
        self.cluster = ukeys // C
        self.irre = ukeys % C
        self.count = counts.to(instance.dtype)
        self.sum = torch.zeros(ukeys.numel(), instance.shape[1], dtype=instance.dtype,
                               device=instance.device).index_add_(0, inverse, instance[rows])
        # groups are sorted by key, hence by cluster; `by_irre` lists them by (irrelevant label, cluster)
        self.by_irre = torch.argsort(self.irre * C + self.cluster)
        self.irre_of_by_irre = self.irre[self.by_irre]
        self.flags = torch.zeros(C, dtype=torch.bool, device=labels.device)

    def to(self, device: torch.device) -> "IrrelevantGroups":
        """Move every tensor to `device`."""
        for name, value in vars(self).items():
            setattr(self, name, value.to(device))
        return self

    def _flag(self, values: Tensor) -> Tensor:
        """C-long mask of `values`: a lookup table that replaces per-step unique + CSR gathers (few ops)."""
        return self.flags.clone().index_fill_(0, values.reshape(-1), True)

    def of_clusters(self, clusters: Tensor) -> Tensor:
        """Ids of every group of the given clusters, ascending (= grouped by sorted cluster)."""
        return torch.nonzero(self._flag(clusters)[self.cluster]).view(-1)

    def with_irrelevant(self, values: Tensor) -> Tensor:
        """Ids of every group whose irrelevant label is one of `values`, ordered by (label, cluster)."""
        return self.by_irre[self._flag(values)[self.irre_of_by_irre]]


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
        P = self.mean_prototypes
        logits = (f @ self.bank.t()).div_(T)
        logits_p = logits[:, C:]
        out: dict[str, Tensor] = {"loss_m": cluster_memory_loss(logits[:, :C], targets)}

        plan = self._plan(f.detach().float(), idx, targets, irre)
        # one matmul for every batch-specific prototype: [Q rows | negatives | L_kl vectors] x 2 passes
        side = (f @ plan["side"].t()).div_(T)
        L, G = plan["q_cols"].numel(), plan["neg_mask"].shape[2]
        # ---- L_dis (5.2): pass 0 reads I, pass 1 the virtually written I (stacked on a leading dim)
        B = f.shape[0]
        fallback = logits_p.gather(1, irre[:, :1]).squeeze(1)
        q_logits = side[:, :2 * L].view(B, 2, L).transpose(0, 1)
        neg = side[:, 2 * L:2 * L + 2 * G].view(B, 2, G).transpose(0, 1)
        target_slot = (targets.view(-1, 1) == plan["q_cols"].view(1, -1)).int().argmax(dim=1)
        passes = disentangled_pass_loss(logits_p, plan["q_cols"], q_logits, target_slot, neg, plan["neg_mask"][0],
                                        fallback, self.tau_dis)
        out["loss_dis"] = passes.mean()
        out["loss_dis_pass0"], out["loss_dis_pass1"] = passes[0], passes[1]
        # ---- L_kl (5.3): D_k[row] = c0 P[row] + cv @ V, so f.D_k[row] = c0 f.P[row] + (f.V^T) cv^T
        side_v = side[:, 2 * L + 2 * G:]
        rows, c0, cv = plan["tables"]
        K = c0.shape[0]
        touched = c0.unsqueeze(1) * logits_p.index_select(1, rows).unsqueeze(0) + side_v @ cv.transpose(1, 2)
        tables = replace_columns(logits_p.unsqueeze(0).expand(K, B, C), rows, touched)
        log_q = F.log_softmax(f_hat @ P.t() / T, dim=1)
        kls = relative_entropy_loss(tables, log_q)
        out["loss_kl"] = kls.mean()
        for k in range(K):
            out[f"loss_kl_k{k}"] = kls[k]
            if details:
                table_rows = c0[k].view(-1, 1) * P[rows] + cv[k] @ plan["vectors"]
                out[f"re_dist_proto_k{k}"] = P.index_copy(0, rows, table_rows)
        if details:
            first = plan["pair_of"][:, 0]
            out["dis_pos_proto0"], out["dis_pos_proto1"] = (m[first] for m in plan["pos"])
        return out

    @torch.no_grad()
    def _plan(self, f: Tensor, idx: Tensor, targets: Tensor, irre: Tensor) -> dict:
        """Every prototype the batch's losses need, from group sums (no N-sized work, no gradient).

        `side` stacks the normalised L_dis rows Q[t] (pass 0, pass 1), the normalised negative group
        prototypes (pass 0, pass 1) and the L_kl vectors; also the negative masks and the L_kl
        table coefficients.
        """
        C, gr, P = self.num_clusters, self.groups, self.mean_prototypes
        B, K = irre.shape
        # groups of the batch's clusters (S+) and groups carrying the batch's irrelevant labels (S-)
        pos_groups = gr.of_clusters(targets)
        neg_groups = gr.with_irrelevant(irre)
        # virtual write I[idx] = f (last duplicate wins): per written group, the sum of row deltas
        keep = last_occurrence(idx)
        rows_w = idx[keep]
        written, slot = torch.unique(gr.group_of[rows_w], return_inverse=True)
        delta = torch.zeros(written.numel(), f.shape[1], dtype=f.dtype, device=f.device)
        delta.index_add_(0, slot, f[keep] - self.instance.index_select(0, rows_w))
        # m+ per distinct (t, a) pair: sum of the cluster's groups whose irrelevant label is not a
        pairs, pair_of = torch.unique(targets.view(-1, 1) * C + irre, return_inverse=True)
        pair_of = pair_of.view(B, K)
        p_t, p_a = pairs // C, pairs % C
        member = ((gr.cluster[pos_groups].view(1, -1) == p_t.view(-1, 1))
                  & (gr.irre[pos_groups].view(1, -1) != p_a.view(-1, 1))).to(f.dtype)
        count = (member @ gr.count[pos_groups]).view(-1, 1)
        pos_hit = member @ (pos_groups.view(-1, 1) == written.view(1, -1)).to(f.dtype)
        pos_sum0 = member @ gr.sum.index_select(0, pos_groups)
        pos_sum1 = pos_sum0 + pos_hit @ delta
        empty = count == 0
        fallback = P.index_select(0, p_t)
        pos0 = torch.where(empty, fallback, pos_sum0 / count.clamp(min=1))
        pos1 = torch.where(empty, fallback, pos_sum1 / count.clamp(min=1))
        # S- of anchor i for order k: groups (c, a_i^k) with c != t_i, one prototype per group
        n_cluster = gr.cluster[neg_groups]
        neg_mask = ((gr.irre[neg_groups].view(1, 1, -1) == irre.t().unsqueeze(2))
                    & (n_cluster.view(1, 1, -1) != targets.view(1, -1, 1)))
        n_count = gr.count[neg_groups].view(-1, 1)
        neg_sum0 = gr.sum.index_select(0, neg_groups)
        neg_hit = (neg_groups.view(-1, 1) == written.view(1, -1)).to(f.dtype)
        neg0 = neg_sum0 / n_count
        neg1 = (neg_sum0 + neg_hit @ delta) / n_count
        # Q[t] = (1-tau) P[t] + tau m+, m+ of the cluster's last anchor in the batch
        last = torch.nonzero(last_occurrence(targets)).view(-1)
        q_cols = targets[last]
        q_pair = pair_of[last, 0]
        p_q = (1 - self.tau_dis) * P.index_select(0, q_cols)
        q0 = p_q + self.tau_dis * pos0.index_select(0, q_pair)
        q1 = p_q + self.tau_dis * pos1.index_select(0, q_pair)
        vectors = torch.cat([pos1, neg1], 0)
        side = torch.cat([q0 / q0.norm(dim=1, keepdim=True), q1 / q1.norm(dim=1, keepdim=True),
                          F.normalize(neg0, dim=1), F.normalize(neg1, dim=1), vectors], 0)
        tables = self._kl_tables(targets, pair_of, neg_mask, torch.cat([p_t, n_cluster]), vectors)
        return {"side": side, "q_cols": q_cols, "neg_mask": neg_mask, "vectors": vectors, "tables": tables,
                "pos": (pos0, pos1), "pair_of": pair_of}

    @torch.no_grad()
    def _kl_tables(self, targets: Tensor, pair_of: Tensor, neg_mask: Tensor, vec_cluster: Tensor,
                   vectors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(touched rows U, c0 (K x |U|), cv (K x |U| x n)) with D_k[U] = c0[k] P[U] + cv[k] @ vectors (5.3).

        Anchor i, in batch order, moves row t_i towards its m+ (vector `pair_of[i, k]`) and each
        negative row c towards its group mean (vector n_pairs + group); rows evolve independently.
        Every vector moves only the row of its own cluster `vec_cluster`, so a row needs the dots
        of its start with its own cluster's vectors only. Rows an order does not touch get c0=1, cv=0.
        """
        B, K = targets.numel(), pair_of.shape[1]
        dev = targets.device
        n, G = vectors.shape[0], neg_mask.shape[2]
        n_pairs = n - G
        # event table over (order k, anchor i, slot j): slot 0 is the positive move of row t_i, slot
        # 1+g the move of row c_g towards negative group g; nonzero() walks it in batch order per order
        touch = torch.cat([neg_mask.new_ones(K, B, 1), neg_mask], 2)
        row_tab = torch.cat([targets.view(1, B, 1).expand(K, B, 1),
                             vec_cluster[n_pairs:].view(1, 1, G).expand(K, B, G)], 2)
        vec_tab = torch.cat([pair_of.t().unsqueeze(2),
                             torch.arange(n_pairs, n, device=dev).view(1, 1, G).expand(K, B, G)], 2)
        flat = torch.nonzero(touch.view(-1)).view(-1)
        ev_k = torch.div(flat, B * (G + 1), rounding_mode="floor")
        # one sequence per (order, touched row); a stable sort keeps batch order inside each
        rows, slot = torch.unique(row_tab.view(-1)[flat], return_inverse=True)
        U = rows.numel()
        inst, order = torch.sort(ev_k * U + slot, stable=True)
        counts = torch.bincount(inst, minlength=K * U)
        step = torch.arange(inst.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[inst]
        S = int(counts.max())
        vec_m = torch.full((K * U, S), n, dtype=torch.long, device=dev)     # n = "no event" padding
        vec_m[inst, step] = vec_tab.view(-1)[flat[order]]
        keep = [1 - self.tau_re] * n_pairs + [1 - self.tau1_re] * G + [1.0]
        mix = [self.tau_re] * n_pairs + [self.tau1_re] * G + [0.0]
        P = self.mean_prototypes
        own_dot = (P.index_select(0, vec_cluster) * vectors).sum(dim=1)
        start_dots = torch.where(rows.view(-1, 1) == vec_cluster.view(1, -1), own_dot.view(1, -1), 0.0)
        start = P.index_select(0, rows)
        start_sq = (start * start).sum(dim=1)
        gram = vectors @ vectors.t()
        c0, cv = table_row_coefficients(
            start_dots.double().repeat(K, 1), start_sq.double().repeat(K), gram.double(), vec_m,
            torch.tensor(keep, dtype=torch.float64, device=dev), torch.tensor(mix, dtype=torch.float64, device=dev))
        return rows, c0.to(vectors.dtype).view(K, U), cv.to(vectors.dtype).view(K, U, -1)

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None:
        """Prototype update (hard / mean, method.md 5.1 and 5.5) and the instance write I[idx] = f."""
        f = f.detach().to(device=self.device, dtype=self.bank.dtype)
        idx, targets = idx.to(self.device), targets.to(self.device)
        B, C, m = f.shape[0], self.num_clusters, self.momentum
        clusters, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
        n = clusters.numel()
        if self.mode in ("DLhybrid", "CMhard"):
            H = self.bank.index_select(0, clusters)
            sims = (f * H.index_select(0, inverse)).sum(dim=1)
            lowest = torch.full((n,), float("inf"), device=self.device).scatter_reduce(0, inverse, sims, "amin")
            pos = torch.where(sims == lowest[inverse], torch.arange(B, device=self.device), B)
            j_star = torch.full((n,), B, device=self.device).scatter_reduce(0, inverse, pos, "amin")
            v = m * H + (1 - m) * f.index_select(0, j_star)
            self.bank[clusters] = v / v.norm(dim=1, keepdim=True)
        if self.mode in ("DLhybrid", "CM"):
            rows = clusters + C if self.mode == "DLhybrid" else clusters
            means = torch.zeros(n, f.shape[1], dtype=f.dtype, device=self.device).index_add_(0, inverse, f)
            means = means / counts.to(f.dtype).view(-1, 1)
            v = m * self.bank.index_select(0, rows) + (1 - m) * means
            self.bank[rows] = v / v.norm(dim=1, keepdim=True)
        keep = last_occurrence(idx)
        rows_w, f_w = idx[keep], f[keep]
        if self.groups is not None:
            gid = self.groups.group_of[rows_w]
            ok = gid >= 0
            self.groups.sum.index_add_(0, gid[ok], (f_w - self.instance.index_select(0, rows_w))[ok])
        self.instance[rows_w] = f_w
