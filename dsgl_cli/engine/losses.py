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


def disentangled_pass_loss(logits: Tensor, columns: Tensor, column_logits: Tensor, target_slot: Tensor,
                           neg_logits: Tensor, neg_mask: Tensor, fallback_logits: Tensor, tau: float) -> Tensor:
    """L_dis pass(es) (method.md 5.2): -mean_i log(e^{o_it} / (sum_k e^{o_ik} + tau sum_g e^{s_ig})).

    The passes score f against f.P^T/T (`logits`, B x C) whose `columns` (the batch's clusters, L)
    hold `column_logits` (.. x B x L, f.normalize(Q)^T/T; a leading dim stacks passes); anchor i's
    own cluster is column `target_slot[i]`. `neg_logits` (.. x B x G) is f.normalize(g)^T/T for
    candidate negative prototypes, `neg_mask` (B x G) says which belong to which anchor; anchors with
    none use `fallback_logits` (B: f_i.P[a_i^0]/T). The untouched C - L columns are summed once
    (one B x C logsumexp shared by every pass) instead of materialising a B x C table per pass.
    Returns one loss per leading index.
    """
    lead = column_logits.shape[:-1]
    log_tau = math.log(tau)
    rest = torch.logsumexp(logits.index_fill(-1, columns, float("-inf")), dim=-1, keepdim=True)
    has_neg = neg_mask.any(dim=1, keepdim=True)
    neg = neg_logits.masked_fill(~neg_mask, float("-inf")) + log_tau
    fb = fallback_logits.unsqueeze(1).masked_fill(has_neg, float("-inf")) + log_tau
    log_den = torch.logsumexp(torch.cat([rest.expand(*lead, 1), column_logits, neg, fb.expand(*lead, 1)], -1), -1)
    log_num = column_logits.gather(-1, target_slot.view(-1, 1).expand(*lead, 1)).squeeze(-1)
    return (log_den - log_num).mean(dim=-1)


def relative_entropy_loss(logits_table: Tensor, log_q: Tensor) -> Tensor:
    """KL_k = mean_i sum_c p_ic (log p_ic - log q_ic), p = softmax(f.D^T/T) (method.md 5.3).

    `logits_table` is .. x B x C (a leading dim stacks the orders k); one KL per leading index.
    """
    log_p = F.log_softmax(logits_table, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean(dim=-1)


@torch.no_grad()
def table_row_coefficients(start_dots: Tensor, start_sq: Tensor, gram: Tensor, event_vec: Tensor,
                           vec_keep: Tensor, vec_mix: Tensor) -> tuple[Tensor, Tensor]:
    """Run the L_kl read-modify-write recurrence D[r] <- normalize(a D[r] + b v) (method.md 5.3).

    Every update reads only its own row of D, so rows evolve independently. Row r starts at x_r and
    applies, in order s = 0..S-1, the event e = `event_vec[r, s]`: v = V[e], a = `vec_keep[e]`,
    b = `vec_mix[e]`; e = n (= len(V)) is padding after a row's last event (vec_keep[n] = 1,
    vec_mix[n] = 0). A row stays in span{x_r, V}, so the recurrence runs on coefficients: it needs
    only `start_dots` = x.V^T (R x n), `start_sq` = |x|^2 (R) and `gram` = V.V^T (n x n), all in
    float64. Returns (c0, cv) with final row = c0 x_r + cv @ V. Rows with events have their first
    one at s = 0 (afterwards they have unit norm); rows without events stay exactly at their start.
    The S sequential steps cost 7 small in-place kernels each (the recurrence cannot be batched:
    every step normalises by a norm that depends on the previous one).
    """
    R, S = event_vec.shape
    n = gram.shape[0]
    dev = gram.device
    # the padding event is a null vector n: zero gram row / column, so it moves nothing
    gram = F.pad(gram, (0, 1, 0, 1))
    # state Z = [row.V^T | cv | c0] (V with the null vector); an event adds b * [V[e].V^T | onehot(e) | 0]
    step_rows = torch.cat([gram, torch.eye(n + 1, dtype=gram.dtype, device=dev),
                           torch.zeros(n + 1, 1, dtype=gram.dtype, device=dev)], 1)
    z = torch.cat([F.pad(start_dots, (0, 1)), torch.zeros(R, n + 1, dtype=gram.dtype, device=dev),
                   torch.ones(R, 1, dtype=gram.dtype, device=dev)], 1)
    # per step (rows of S x R tables): |a x + b v|^2 = a^2 |x|^2 + b^2 |v|^2 + 2ab x.v, |x| = 1 after step 0
    e_all = event_vec.t().contiguous()
    a = vec_keep[e_all]
    b = vec_mix[e_all]
    const = torch.addcmul(a * a, b * b, gram.diagonal()[e_all])
    const[0] += torch.where(b[0] > 0, a[0] * a[0] * (start_sq - 1), 0.0)
    cross = 2 * a * b
    # per-step operands unbound once, so the loop is 7 kernels per step and allocates 3 small tensors
    cols = [x.unsqueeze(2).unbind(0) for x in (e_all, const, cross, a, b)]
    for e, e_flat, c, x, a_s, b_s in zip(cols[0], e_all.unbind(0), *cols[1:]):
        inv = torch.addcmul(c, x, z.gather(1, e)).rsqrt_()
        z.mul_(a_s).addcmul_(step_rows.index_select(0, e_flat), b_s).mul_(inv)
    return z[:, -1], z[:, n + 1 : 2 * n + 1]
