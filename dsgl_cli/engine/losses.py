"""The three DSGL losses from prepared logits (method.md 5.1-5.3); pure tensor functions, no state.

`DSGLMemory` (memory.py) finds the prototypes; these functions turn similarities into losses so
the math reads like the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def cluster_memory_loss(logits_hard: Tensor, targets: Tensor) -> Tensor:
    """L_m = CE(f.H^T/T, t) over the hard prototypes (method.md 5.1)."""
    return F.cross_entropy(logits_hard, targets)


def replace_columns(logits: Tensor, columns: Tensor, values: Tensor) -> Tensor:
    """Copy of `logits` (.. x B x C) whose `columns` hold `values` (a table differing in a few rows)."""
    return logits.index_copy(-1, columns, values)


def disentangled_pass_loss(logits_q: Tensor, targets: Tensor, neg_logits: Tensor, neg_mask: Tensor,
                           fallback_logits: Tensor, tau: float) -> Tensor:
    """L_dis pass(es) (method.md 5.2): -mean_i log(e^{o_it} / (sum_k e^{o_ik} + tau sum_g e^{s_ig})).

    `logits_q` is f.normalize(Q)^T/T (.. x B x C, a leading dim stacks passes); `neg_logits`
    (.. x B x G) is f.normalize(g)^T/T for candidate negative prototypes, `neg_mask` (B x G) says
    which belong to which anchor; anchors with none use `fallback_logits` (B: f_i.P[a_i^0]/T).
    Computed with a logsumexp; returns one loss per leading index.
    """
    log_tau = math.log(tau)
    has_neg = neg_mask.any(dim=1, keepdim=True)
    neg = neg_logits.masked_fill(~neg_mask, float("-inf")) + log_tau
    fb = (fallback_logits.unsqueeze(1).masked_fill(has_neg, float("-inf")) + log_tau).expand(
        *logits_q.shape[:-1], 1)
    extra = torch.logsumexp(torch.cat([neg, fb], dim=-1), dim=-1)
    log_den = torch.logaddexp(torch.logsumexp(logits_q, dim=-1), extra)
    index = targets.view(-1, 1).expand(*logits_q.shape[:-1], 1)
    log_num = logits_q.gather(-1, index).squeeze(-1)
    return (log_den - log_num).mean(dim=-1)


def relative_entropy_loss(logits_table: Tensor, log_q: Tensor) -> Tensor:
    """KL_k = mean_i sum_c p_ic (log p_ic - log q_ic), p = softmax(f.D^T/T) (method.md 5.3).

    `logits_table` is .. x B x C (a leading dim stacks the orders k); one KL per leading index.
    """
    log_p = F.log_softmax(logits_table, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean(dim=-1)


@torch.no_grad()
def table_row_coefficients(start_dots: Tensor, start_sq: Tensor, gram: Tensor, event_vec: Tensor,
                           event_keep: Tensor, event_mix: Tensor) -> tuple[Tensor, Tensor]:
    """Run the L_kl read-modify-write recurrence D[r] <- normalize(a D[r] + b v) (method.md 5.3).

    Every update reads only its own row of D, so rows evolve independently. Row r starts at x_r and
    applies, in order s = 0..S-1, a = `event_keep[r, s]`, b = `event_mix[r, s]`, v = V[`event_vec[r, s]`]
    (padding after a row's last event: a=1, b=0). A row stays in span{x_r, V}, so the recurrence runs
    on coefficients: it needs only `start_dots` = x.V^T (R x n), `start_sq` = |x|^2 (R) and
    `gram` = V.V^T (n x n), all in float64. Returns (c0, cv) with final row = c0 x_r + cv @ V.
    Rows with events have their first one at s = 0 (afterwards they have unit norm); rows without
    events (all padding) stay exactly at their start.
    """
    R, S = event_vec.shape
    n = gram.shape[0]
    dev = gram.device
    # state Z = [row.V^T | cv | c0]; an event adds b * [V[e].V^T | onehot(e) | 0]
    step_rows = torch.cat([gram, torch.eye(n, dtype=gram.dtype, device=dev),
                           torch.zeros(n, 1, dtype=gram.dtype, device=dev)], 1)
    z = torch.cat([start_dots, torch.zeros(R, n, dtype=gram.dtype, device=dev),
                   torch.ones(R, 1, dtype=gram.dtype, device=dev)], 1)
    # per step (rows of S x R tables): |a x + b v|^2 = a^2 |x|^2 + b^2 |v|^2 + 2ab x.v, |x| = 1 after step 0
    e_all = event_vec.t().contiguous()
    a = event_keep.t().double()
    b = event_mix.t().double()
    const = b * b * gram.diagonal()[e_all] + a * a
    const[0] += torch.where(b[0] > 0, a[0] * a[0] * (start_sq.double() - 1), 0.0)
    cross = 2 * a * b
    # per-step operands as (R x 1) columns, unbound once so the loop is 8 kernels per step
    cols = [x.unsqueeze(2).unbind(0) for x in (e_all, const, cross, a, b)]
    for e, c, x, a_s, b_s in zip(*cols):
        inv = torch.rsqrt(torch.addcmul(c, x, z.gather(1, e)))
        z = torch.addcmul(z * (a_s * inv), step_rows.index_select(0, e.view(-1)), b_s * inv)
    return z[:, -1], z[:, n : 2 * n]
