"""The batch plan of one DSGL step: every constant the batch's losses need, in fixed shapes.

The means over S+ / S- (method.md 5.2-5.3) run over all N images; they are unions of irrelevant
groups (`groups.py`), so the memory keeps each group's and each cluster's sum of instance-memory
rows and the plan combines a few of them. The write `I[idx] = f` between the two L_dis passes
changes a few sums by the batch's deltas; the plan applies it through B x B products instead of
copying any N- or G-sized table. Everything is tensor code on the memory's device whose shapes
follow from B, d, C, G and m alone: no NumPy, no host copy, no output whose size depends on the
data (issue 22), so a step never waits for the host and can be compiled or captured whole.

Inputs are passed in explicitly (`MemoryTables`), so the plan reads no memory object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dsgl_cli.method.groups import IrrelevantGroups
from dsgl_cli.method.kl_recurrence import kl_coefficients, kl_events


@dataclass
class MemoryTables:
    """What the plan reads of the memory, all on one device; nothing here is written by the plan."""

    instance: Tensor        # N x d, I
    mean_protos: Tensor     # C x d, P
    group_sums: Tensor      # (G + 1) x d, the sum of I over each group; the sentinel row is zero
    cluster_sums: Tensor    # C x d, the sum of I over each cluster
    gram: Tensor            # C x (m + 1) x (m + 1), Gram matrices of the rows' L_kl bases
    groups: IrrelevantGroups


@dataclass
class BatchTables:
    """Index bookkeeping of a batch that the plan and the memory update share (all B or B x B)."""

    same_cluster: Tensor    # B x B, t_i == t_j
    last_of_cluster: Tensor  # B, i is the last anchor of its cluster
    last_anchor: Tensor     # B, the last anchor of i's cluster
    written: Tensor         # B, i is the last of its duplicates of idx (its row is the one written)
    group: Tensor           # B, the group of image idx_i
    same_group: Tensor      # B x B, g_i == g_j
    last_of_group: Tensor   # B, i is the last anchor of its group
    delta: Tensor           # B x d, f_i - I[idx_i] where written, else 0
    group_delta: Tensor     # B x d, the change the write makes to the sum of group g_i
    cluster_delta: Tensor   # B x d, the change the write makes to the sum of cluster t_i


def last_of_class(same: Tensor) -> Tensor:
    """For a B x B equality table: whether i is the last of its class (the write I[idx] = f: the last
    duplicate wins; a cluster's or a group's new row: its last anchor writes it)."""
    return ~torch.triu(same, 1).any(1)


def batch_tables(tables: MemoryTables, f: Tensor, idx: Tensor, targets: Tensor) -> BatchTables:
    """The batch's bookkeeping (method.md 5.2: with duplicate indices the last row wins)."""
    B = targets.numel()
    order = torch.arange(B, device=targets.device)
    same_cluster = targets.view(-1, 1) == targets.view(1, -1)
    last_anchor = torch.where(same_cluster, order.view(1, -1), torch.zeros_like(same_cluster, dtype=torch.long)
                              ).amax(1)
    written = last_of_class(idx.view(-1, 1) == idx.view(1, -1))
    group = tables.groups.group_of[idx]
    same_group = group.view(-1, 1) == group.view(1, -1)
    delta = (f - tables.instance[idx]) * written.view(-1, 1)
    return BatchTables(same_cluster, last_of_class(same_cluster), last_anchor, written, group, same_group,
                       last_of_class(same_group), delta, same_group.to(f.dtype) @ delta,
                       same_cluster.to(f.dtype) @ delta)


@dataclass
class BatchPlan:
    """Constants of the losses of one batch (no gradient); `losses.dsgl_losses` reads them."""

    targets: Tensor          # B
    fallback_cols: Tensor    # B x 1, a^0: the single negative P[a^0] of an anchor with an empty S-
    queries: Tensor          # 2 x B x d, Q[t_i] of L_dis pass 0 and pass 1 (normalised)
    last_of_cluster: Tensor  # B: the Q column of cluster t_i is anchor i's row when i is its last anchor
    neg_mask: Tensor         # B x (G + 1), which groups are anchor i's negatives (label a_i^0, cluster != t_i)
    has_neg: Tensor          # B x 1
    inv_norms: Tensor        # 2 x (G + 1), 1 / |group sum| before and after the write (1 where empty)
    delta: Tensor            # B x d, the write's per-anchor deltas (zero for overwritten duplicates)
    written_group: Tensor    # B x (G + 1), one-hot of each anchor's group (the write's target)
    kl_coef: Tensor          # K x C x (m + 1), D_k[r] = sum_j kl_coef[k, r, j] basis_r[j]
    kl_moved: Tensor         # K x C, the rows of D_k that differ from P
    cluster_groups: Tensor   # C x m, the basis of each row after P[r]
    temp: float              # of L_dis and L_kl: fixed at 0.05 (method.md 5)
    tau_dis: float
    temp_m: float            # of L_m alone: --temp
    smooth: bool = False     # L_m with the reference's label smoothing (method.md 5.1)
    positives: Tensor | None = None   # 2 x B x d, m+ of both L_dis passes (for the parity tests)


def _positive_means(tables: MemoryTables, bt: BatchTables, targets: Tensor, labels: Tensor) -> Tensor:
    """m+ of anchor i against label column `labels` before and after the write (2 x B x d).

    m+ = (cluster sum - sum of group (t_i, label)) / its count, or P[t_i] where that count is 0.
    """
    gr = tables.groups
    excluded = gr.lookup(targets, labels)
    count = (gr.cluster_count[targets] - gr.count[excluded]).view(-1, 1)
    before = tables.cluster_sums[targets] - tables.group_sums[excluded]
    change = bt.same_cluster.to(before.dtype) - (excluded.view(-1, 1) == bt.group.view(1, -1)).to(before.dtype)
    after = before + change @ bt.delta
    fallback = tables.mean_protos[targets]
    means = torch.stack([before, after]) / count.clamp(min=1.0)
    return torch.where(count > 0, means, fallback)


def basis_gram(tables: MemoryTables, bt: BatchTables, targets: Tensor, mean_protos: Tensor) -> Tensor:
    """Gram matrices of the L_kl bases [P[t_i]; group sums of t_i after the write] (B x (m+1) x (m+1))."""
    slots = tables.groups.cluster_groups[targets]                              # B x m
    after_write = tables.group_sums[bt.group] + bt.group_delta                   # B x d, per anchor's group
    hit = slots.unsqueeze(-1) == bt.group.view(1, 1, -1)                        # B x m x B
    source = hit.to(torch.long).argmax(-1)                                      # an anchor of that group
    sums = torch.where(hit.any(-1, keepdim=True), after_write[source], tables.group_sums[slots])
    basis = torch.cat([mean_protos[targets].unsqueeze(1), sums], 1)
    return basis @ basis.transpose(1, 2)


def scatter_rows(table: Tensor, rows: Tensor, keep: Tensor, values: Tensor) -> Tensor:
    """A new `table` with rows[i] <- values[i] where keep[i] (for small tables; `RowTable` writes the
    memory's own in place)."""
    out = RowTable(table, spare=rows.numel())
    out.write_(rows, keep, values)
    return out.data


class RowTable:
    """A tensor with spare rows past its end, so that a batch can write its rows in place with
    distinct indices: anchor i writes rows[i] where keep[i] and a spare row otherwise. Distinct
    indices make the write deterministic on every device, and the write needs no mask whose size
    depends on the data."""

    def __init__(self, data: Tensor, spare: int = 0) -> None:
        """`spare` > 0: the rows are grown now, into a new tensor (`data` stays as it is)."""
        self.size = data.shape[0]
        self.storage = torch.cat([data, data.new_zeros((spare, *data.shape[1:]))]) if spare else data
        self._spare: Tensor | None = None   # the spare rows' indices, made once per batch size

    @property
    def data(self) -> Tensor:
        """The table itself (a view: in-place writes show through)."""
        return self.storage[: self.size]

    def write_(self, rows: Tensor, keep: Tensor, values: Tensor) -> None:
        B = rows.numel()
        if self.storage.shape[0] < self.size + B:      # once per run: room for the batch's spare writes
            spare = self.storage.new_zeros((B, *self.storage.shape[1:]))
            self.storage = torch.cat([self.storage[: self.size], spare])
        if self._spare is None or self._spare.numel() != B or self._spare.device != rows.device:
            self._spare = torch.arange(self.size, self.size + B, device=rows.device)
        self.storage.index_copy_(0, torch.where(keep, rows, self._spare), values.to(self.storage.dtype))


def basis_gram_table(tables: MemoryTables, bt: BatchTables, targets: Tensor, mean_protos: Tensor) -> Tensor:
    """The memory's Gram table with the batch's clusters recomputed at (`mean_protos`, sums after the write)."""
    return scatter_rows(tables.gram, targets, bt.last_of_cluster, basis_gram(tables, bt, targets, mean_protos))


@torch.no_grad()
def plan_batch(tables: MemoryTables, f: Tensor, idx: Tensor, targets: Tensor, irre: Tensor, *,
               temp: float, temp_m: float, tau_dis: float, tau_re: float, tau1_re: float, smooth: bool
               ) -> tuple[BatchPlan, BatchTables]:
    """Every prototype and table the batch's losses need (method.md 5.2-5.3), from the memory's sums."""
    gr = tables.groups
    bt = batch_tables(tables, f, idx, targets)
    a0 = irre[:, 0]
    # L_dis: m+ per anchor, Q[t_i] from the m+ of the cluster's last anchor, both passes
    positives = _positive_means(tables, bt, targets, a0)
    P_t = tables.mean_protos[targets]
    queries = F.normalize((1 - tau_dis) * P_t + tau_dis * positives[:, bt.last_anchor], dim=2)
    # negatives: groups (c, a_i^0) with c != t_i, normalised; their norms before and after the write
    neg_mask = (gr.label.view(1, -1) == a0.view(-1, 1)) & (gr.cluster.view(1, -1) != targets.view(-1, 1))
    written_group = (bt.group.view(-1, 1) == gr.group_ids.view(1, -1)).to(f.dtype)
    diag = torch.diagonal(tables.gram, dim1=1, dim2=2)[:, 1:]                      # C x m: |S_g|^2
    sq_before = diag[gr.cluster.clamp(min=0), gr.slot] * (gr.cluster >= 0)
    after_write = tables.group_sums[bt.group] + bt.group_delta
    sq_after = scatter_rows(sq_before, bt.group, bt.last_of_group, (after_write * after_write).sum(1))
    norms = torch.stack([sq_before, sq_after]).sqrt_()
    inv_norms = torch.where(norms > 0, 1.0 / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
    # L_kl: the rows of D_k as coefficients over their bases, after the write
    gram = basis_gram_table(tables, bt, targets, tables.mean_protos)
    events, a, b, first = kl_events(gr, targets, irre, tau_re, tau1_re)
    coef, moved = kl_coefficients(gram, events, a, b, first)
    plan = BatchPlan(targets=targets, fallback_cols=a0.view(-1, 1), queries=queries,
                     last_of_cluster=bt.last_of_cluster, neg_mask=neg_mask, has_neg=neg_mask.any(1, keepdim=True),
                     inv_norms=inv_norms, delta=bt.delta, written_group=written_group, kl_coef=coef.to(f.dtype),
                     kl_moved=moved, cluster_groups=gr.cluster_groups, temp=temp, tau_dis=tau_dis, temp_m=temp_m,
                     smooth=smooth, positives=positives)
    return plan, bt


def kl_tables(tables: MemoryTables, plan: BatchPlan) -> Tensor:
    """The full L_kl tables D_k (K x C x d) the plan stands for, from the sums after the write
    (for the parity tests and `details`; a step never builds them)."""
    sums_after = tables.group_sums + plan.written_group.t() @ plan.delta
    basis = torch.cat([tables.mean_protos.unsqueeze(1), sums_after[plan.cluster_groups]], 1)   # C x (m+1) x d
    rows = torch.einsum("kcj,cjd->kcd", plan.kl_coef, basis)
    return torch.where(plan.kl_moved.unsqueeze(-1), rows, tables.mean_protos.unsqueeze(0))
