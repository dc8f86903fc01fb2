"""The three DSGL losses from prepared prototypes (method.md 5.1-5.3), with a hand-written backward.

`DSGLMemory` (memory.py) finds the batch's prototypes and packs them into a `LossPlan`;
`DSGLLossFunction` turns f and f_hat into L_m, the L_dis passes and the L_kl orders. Autograd
through the same math costs ~100 graph nodes and K copies of a B x C table; the closed-form
gradients below need a handful of B x C kernels besides the prototype GEMMs, which is most of
what makes a step fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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
    weights[torch.arange(B, device=weights.device), targets] += 1.0 - SMOOTHING
    return weights


def cluster_memory_loss(logits_hard: Tensor, targets: Tensor, smooth: bool = False) -> Tensor:
    """L_m = CE(f.H^T/T, t) over the hard prototypes (method.md 5.1), optionally label-smoothed.

    Used as is by the CM baselines; DLhybrid computes the same inside `DSGLLossFunction`.
    """
    if not smooth:
        return F.cross_entropy(logits_hard, targets)
    return -(smoothed_targets(logits_hard, targets) * F.log_softmax(logits_hard, 1)).sum(1).mean()


@dataclass
class LossPlan:
    """Everything batch-specific the losses need; built without gradient by `DSGLMemory._plan`.

    The batch-specific scores f.x/T the losses read are, in this order: the normalised L_dis rows
    Q[t] of pass 0 and pass 1 (L each), the normalised negative group prototypes of both passes
    (G each) and the n L_kl vectors V. They are linear in fewer rows: `side` (S x d) holds those
    rows and `side_map` (S x (2L + 2G + n)) combines their scores, so that
    scores = (f.side^T/T) @ side_map.
    """

    targets: Tensor        # B, pseudo labels t
    fallback_cols: Tensor  # B x 1, a^0: the single negative P[a^0] of anchors with an empty S-
    side: Tensor           # S x d
    side_map: Tensor       # S x (2L + 2G + n)
    q_cols: Tensor         # L, the batch's clusters (columns of Q that differ from P)
    target_slot: Tensor    # B, position of t_i in q_cols
    neg_mask: Tensor       # B x G, which negative groups belong to anchor i (column-0 order)
    kl_rows: Tensor        # U, rows of the L_kl tables D_k that differ from P
    kl_c0: Tensor          # K x U, D_k[U] = c0 P[U] + cv @ V
    kl_cv: Tensor          # K x U x n
    other_rows: Tensor     # rows of U that are not batch clusters (U contains every t_i)
    temp: float            # of L_dis and L_kl: fixed at 0.05 (method.md 5)
    tau_dis: float
    temp_m: float          # of L_m alone: --temp
    smooth: bool = False   # L_m with the reference's label smoothing (method.md 5.1)

    @property
    def num_q(self) -> int:
        return self.q_cols.numel()

    @property
    def num_neg(self) -> int:
        return self.neg_mask.shape[1]


_NEG_INF = float("-inf")


def _scores(prototypes: Tensor, f: Tensor, temp: float, product: Callable[[Tensor, Tensor], Tensor] = mm) -> Tensor:
    """f.prototypes^T/T as a contiguous B x R table.

    Computed as (prototypes.f^T)^T: with B = 64 rows both MKL and oneDNN run the tall form faster
    than f.prototypes^T. `product` is torch.mm for the batch's side rows, whose count changes every
    step (oneDNN builds a kernel per new shape, ~1 ms).
    """
    return _contiguous_div(product(prototypes, f.t()).t(), temp)


def _bank_scores(bank: Tensor, f: Tensor, temp_hard: float, temp_mean: float) -> Tensor:
    """[f.H^T / temp_hard | f.P^T / temp_mean] as one contiguous B x 2C table from one product.

    With equal temperatures this is exactly `_scores(bank, f, T)`: the same products, the same division.
    """
    raw = mm(bank, f.t()).t()
    if temp_hard == temp_mean:
        return _contiguous_div(raw, temp_hard)
    C = bank.shape[0] // 2
    out = raw.new_empty(raw.shape)
    torch.div(raw[:, :C], temp_hard, out=out[:, :C])
    torch.div(raw[:, C:], temp_mean, out=out[:, C:])
    return out


def _contiguous_div(x: Tensor, divisor: float) -> Tensor:
    """x / divisor written to a fresh contiguous tensor: one pass, however x is laid out."""
    return torch.div(x, divisor, out=x.new_empty(x.shape))


class DSGLLossFunction(torch.autograd.Function):
    """(L_m, L_dis per pass (2), KL per order (K)) of f and f_hat against constant prototypes.

    Forward (method.md 5.1-5.3), with z = [f.H^T/T_m | f.P^T/T], w = (f.side^T/T) @ side_map,
    y = f_hat.P^T/T, T_m = --temp and T = 0.05 (method.md 5):
    * L_m = mean_i lse(z_H[i]) - z_H[i, t_i] (label-smoothed: lse(z_H[i]) - sum_c w_ic z_H[i, c]).
    * L_kl order k: the table D_k differs from P only in the rows U (U holds every t_i), so
      p^k = alpha^k s on the other columns (s = softmax of z_P over them) and
      KL^k = alpha^k (KL(s||q) + log alpha^k) + sum_U p^k (log p^k - log q): one B x C pass serves
      every order.
    * L_dis pass: the columns of Q outside the batch's clusters are P's; their exp-sum `rest` is the
      non-U mass of the L_kl term plus a few U columns, shared by both passes; the rest of the
      denominator is small (L + G + 1 terms).
    Backward uses the closed forms dKL/dx = p (log p - log q - KL) and dKL/dy = q - p.
    """

    @staticmethod
    def forward(ctx, f: Tensor, f_hat: Tensor, bank: Tensor, plan: LossPlan):
        ctx.set_materialize_grads(False)
        B, C, L, G = f.shape[0], bank.shape[0] // 2, plan.num_q, plan.num_neg
        T, log_tau = plan.temp, math.log(plan.tau_dis)
        P = bank[C:]
        z = _bank_scores(bank, f, plan.temp_m, T)
        zh, zp = z[:, :C], z[:, C:]
        w = torch.mm(_scores(plan.side, f, T, torch.mm), plan.side_map)
        # L_m (5.1)
        log_ph = F.log_softmax(zh, 1)
        smooth = smoothed_targets(zh, plan.targets) if plan.smooth else None
        if smooth is None:
            loss_m = -log_ph.gather(1, plan.targets.view(-1, 1)).mean()
        else:
            loss_m = -(smooth * log_ph).sum(1).mean()
        # the columns of f.P^T/T outside U (rows of P the L_kl tables touch, the batch's clusters among
        # them) are shared by every L_dis pass and L_kl order. Everything is taken relative to the row
        # max `top`, so no rounded value of size 1/T is ever subtracted (that alone cost 3x the
        # float32 error of the gradient)
        rows, c0, cv = plan.kl_rows, plan.kl_c0, plan.kl_cv
        top = zp.amax(1, keepdim=True)
        shifted = zp - top
        s = shifted.index_fill(1, rows, _NEG_INF).exp_()
        mass = s.sum(1, keepdim=True).clamp_(min=torch.finfo(s.dtype).tiny)
        # L_dis (5.2), both passes on a leading dim; the untouched columns of Q are P's: their
        # exp-sum is the mass outside U plus the columns of U outside the batch's clusters
        ex_other = shifted.index_select(1, plan.other_rows).exp_()
        rest = (mass + ex_other.sum(1, keepdim=True)).log_().add_(top)
        col = w[:, : 2 * L].view(B, 2, L).transpose(0, 1)
        neg = w[:, 2 * L : 2 * (L + G)].view(B, 2, G).transpose(0, 1).masked_fill(~plan.neg_mask, _NEG_INF)
        fb = zp.gather(1, plan.fallback_cols).masked_fill(plan.neg_mask.any(1, keepdim=True), _NEG_INF)
        terms = torch.cat([rest.expand(2, B, 1), col, neg.add_(log_tau), fb.add_(log_tau).expand(2, B, 1)], 2)
        lse_dis = torch.logsumexp(terms, 2, keepdim=True)
        slot = plan.target_slot.view(1, B, 1).expand(2, B, 1)
        dis = (lse_dis - col.gather(2, slot)).mean(1).view(2)
        # L_kl (5.3): non-U columns through s = their softmax, the U columns per order
        log_q = F.log_softmax(_scores(P, f_hat, T), 1)
        r = mass.log()                                        # log of the non-U mass, relative to top
        s.div_(mass)
        shifted.sub_(r).sub_(log_q)                               # log s - log q (finite everywhere)
        kl_s = (s * shifted).sum(1).view(1, B)
        touched = torch.matmul(w[:, 2 * (L + G) :], cv.transpose(1, 2))
        touched.addcmul_(c0.unsqueeze(1), zp.index_select(1, rows).unsqueeze(0)).sub_(top.unsqueeze(0))
        lse = torch.logaddexp(r.view(1, B), torch.logsumexp(touched, 2))   # K x B, relative to top
        shift = r.view(1, B) - lse                            # log alpha
        alpha = shift.exp()
        log_pu = touched.sub_(lse.unsqueeze(2))
        pu = log_pu.exp()
        du = log_pu.sub_(log_q.index_select(1, rows).unsqueeze(0))
        kl_i = alpha * (kl_s + shift) + (pu * du).sum(2)
        ctx.save_for_backward(f, f_hat, bank)
        ctx.plan = plan
        ctx.parts = (log_ph, top, mass, ex_other, rest, terms, lse_dis, s, shifted, log_q, alpha, shift, kl_i, pu, du)
        ctx.smooth = smooth
        return loss_m, dis, kl_i.mean(1)

    @staticmethod
    def backward(ctx, g_m: Tensor | None, g_dis: Tensor | None, g_kl: Tensor | None):
        f, f_hat, bank = ctx.saved_tensors
        plan: LossPlan = ctx.plan
        log_ph, top, mass, ex_other, rest, terms, lse_dis, s, shifted, log_q, alpha, shift, kl_i, pu, du = ctx.parts
        B, C, L, G = f.shape[0], bank.shape[0] // 2, plan.num_q, plan.num_neg
        g_h = f.new_zeros(B, C)
        g_w = f.new_zeros(B, plan.side_map.shape[1])
        g_py = f.new_zeros(2 * B if g_kl is not None else B, C)   # [d/d(f.P^T/T); d/d(f_hat.P^T/T)]
        g_p = g_py[:B]
        s_coef = None                                          # d/dz on the non-U columns = s * s_coef
        if g_m is not None:                                    # softmax - target weights
            torch.exp(log_ph, out=g_h)
            if ctx.smooth is None:
                g_h[torch.arange(B, device=f.device), plan.targets] -= 1.0
            else:
                g_h.sub_(ctx.smooth)
            g_h.mul_(g_m / B)
        if g_dis is not None:
            per_pass = (g_dis / B).view(2, 1, 1)
            wts = (terms - lse_dis).exp_().mul_(per_pass)
            wts[:, :, 1 : 1 + L].scatter_add_(2, plan.target_slot.view(1, B, 1).expand(2, B, 1),
                                              (-per_pass).expand(2, B, 1))
            # d rest / d z_c = exp(z_c - rest) = exp(dev_c) exp(top - rest); outside U exp(dev_c) = s_c mass
            rest_scale = (top - rest).exp_().mul_(wts[:, :, 0].sum(0).view(B, 1))
            g_p.index_add_(1, plan.other_rows, ex_other * rest_scale)
            s_coef = mass * rest_scale
            g_p.scatter_add_(1, plan.fallback_cols, wts[:, :, -1].sum(0).view(B, 1))
            g_w[:, : 2 * L] = wts[:, :, 1 : 1 + L].transpose(0, 1).reshape(B, 2 * L)
            g_w[:, 2 * L : 2 * (L + G)] = wts[:, :, 1 + L : 1 + L + G].transpose(0, 1).reshape(B, 2 * G)
        if g_kl is not None:
            K = g_kl.numel()
            per_order = (g_kl / B).view(K, 1)
            wa = per_order * alpha
            a = wa.sum(0).view(B, 1)
            kl_coef = shifted * a + (wa * (shift - kl_i)).sum(0).view(B, 1)
            s_coef = kl_coef if s_coef is None else kl_coef.add_(s_coef)
            g_t = (du - kl_i.unsqueeze(2)).mul_(pu).mul_(per_order.unsqueeze(2))      # K x B x U
            g_p.index_add_(1, plan.kl_rows, (g_t * plan.kl_c0.unsqueeze(1)).sum(0))
            g_w[:, 2 * (L + G) :] = torch.matmul(g_t, plan.kl_cv).sum(0)
            g_y = torch.exp(log_q, out=g_py[B:]).mul_(per_order.sum()).sub_(s * a)
            g_y.index_add_(1, plan.kl_rows, (pu * per_order.unsqueeze(2)).sum(0), alpha=-1.0)
        if s_coef is not None:
            g_p.addcmul_(s, s_coef)
        # B x d products (contiguous gradients), f and f_hat stacked against P; 1/T folded into alpha
        through_p = mm(g_py, bank[C:]).div_(plan.temp)
        grad_f = mm(g_h, bank[:C]).div_(plan.temp_m).add_(through_p[:B])
        grad_f.addmm_(torch.mm(g_w, plan.side_map.t()), plan.side, alpha=1 / plan.temp)
        return grad_f, (through_p[B:] if g_kl is not None else None), None, None
