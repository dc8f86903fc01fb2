"""The three DSGL losses from a batch plan (method.md 5.1-5.3), differentiable in f and f_hat.

Every prototype is a constant of the plan (`batch_plan.py`); the gradient flows into f through a
handful of products: f against the hybrid memory (B x 2C), against the group sums (B x (G + 1)),
against the batch's Q rows and write deltas (B x B), and f_hat against P. The L_dis and L_kl
scores of every other column are gathered from those products, so no N-, C x d- or G x d-sized
table is built per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dsgl_cli.method.batch_plan import BatchPlan
from dsgl_cli.method.gemm import mm

SMOOTHING = 0.1   # the reference's label-smoothing weight, whatever --smooth says (method.md 5.1)


@torch.no_grad()
def smoothed_targets(logits_hard: Tensor, targets: Tensor) -> Tensor:
    """The reference's top-k label smoothing (method.md 5.1) as B x C target weights (no gradient).

    With K = C // 50: for K > 1 each row puts 0.9 on its label and 0.1/K on each of its K largest
    logits (adding up where the label is among them); otherwise 0.9 on the label and 0.1/C everywhere.
    """
    B, C = logits_hard.shape
    K = C // 50
    weights = torch.zeros_like(logits_hard)
    if K > 1:
        top = logits_hard.topk(K, dim=1).indices
        weights.scatter_add_(1, top, torch.full(top.shape, SMOOTHING / K, dtype=weights.dtype, device=weights.device))
    else:
        weights.fill_(SMOOTHING / C)
    weights.scatter_add_(1, targets.view(-1, 1), torch.full((B, 1), 1.0 - SMOOTHING, dtype=weights.dtype,
                                                           device=weights.device))
    return weights


def cluster_memory_loss(logits_hard: Tensor, targets: Tensor, smooth: bool = False) -> Tensor:
    """L_m = CE(f.H^T/T, t) over the hard prototypes (method.md 5.1), optionally label-smoothed."""
    if not smooth:
        return F.cross_entropy(logits_hard, targets)
    return -(smoothed_targets(logits_hard, targets) * F.log_softmax(logits_hard, 1)).sum(1).mean()


class _Scores(torch.autograd.Function):
    """x @ table^T with a constant table, through `gemm.mm` (oneDNN on the CPU) both ways."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor) -> Tensor:
        ctx.save_for_backward(table)
        return mm(table, x.t()).t().contiguous()   # the tall form is the faster one at B = 64 rows

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (table,) = ctx.saved_tensors
        return mm(grad.contiguous(), table), None


def scores(x: Tensor, table: Tensor) -> Tensor:
    """x @ table^T, differentiable in x (the table is a constant of the step)."""
    return _Scores.apply(x, table)


_NEG_INF = float("-inf")


def dsgl_losses(f: Tensor, f_hat: Tensor, bank: Tensor, group_sums: Tensor, plan: BatchPlan
                ) -> tuple[Tensor, Tensor, Tensor]:
    """(L_m, L_dis per pass (2), L_kl per order (K)) of f and f_hat (method.md 5.1-5.3)."""
    C = bank.shape[0] // 2
    T = plan.temp
    log_tau = math.log(plan.tau_dis)
    raw = scores(f, bank)                                   # f.H^T | f.P^T
    z_h, f_p = raw[:, :C] / plan.temp_m, raw[:, C:]
    z_p = f_p / T
    loss_m = cluster_memory_loss(z_h, plan.targets, plan.smooth)
    # f against the group sums before and after the write I[idx] = f (5.2: the write changes the sums
    # of the batch's groups by the deltas)
    f_s0 = scores(f, group_sums)                            # B x (G + 1)
    f_s1 = f_s0 + (f @ plan.delta.t()) @ plan.written_group
    # L_dis (5.2): Q = P except the batch's clusters; negatives = normalised group sums (label a_i^0)
    outside = z_p.index_fill(1, plan.targets, _NEG_INF)
    fallback = z_p.gather(1, plan.fallback_cols).masked_fill(plan.has_neg, _NEG_INF) + log_tau
    passes = []
    for p, f_s in enumerate((f_s0, f_s1)):
        z_q = f @ plan.queries[p].t() / T                   # B x B, column j = Q[t_j]
        own = torch.diagonal(z_q)
        cols = z_q.masked_fill(~plan.last_of_cluster.view(1, -1), _NEG_INF)
        neg = (f_s * plan.inv_norms[p] / T).masked_fill(~plan.neg_mask, _NEG_INF) + log_tau
        lse = torch.logsumexp(torch.cat([outside, cols, neg, fallback], 1), 1)
        passes.append((lse - own).mean())
    # L_kl (5.3): D_k[r] = c0 P[r] + sum_s c_s S1[g_s], so f.D_k[r] comes from f.P and f.S1
    log_q = F.log_softmax(scores(f_hat, bank[C:]) / T, 1)
    basis_scores = torch.cat([f_p.unsqueeze(-1), f_s1[:, plan.cluster_groups]], -1)   # B x C x (m + 1)
    kls = []
    for k in range(plan.kl_coef.shape[0]):
        moved = torch.einsum("irj,rj->ir", basis_scores, plan.kl_coef[k]) / T
        z_d = torch.where(plan.kl_moved[k].view(1, -1), moved, z_p)
        log_p = F.log_softmax(z_d, 1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(1).mean())
    return loss_m, torch.stack(passes), torch.stack(kls)
