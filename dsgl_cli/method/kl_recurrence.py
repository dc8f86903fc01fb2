"""The L_kl tables D_k (method.md 5.3) as a fixed-shape recurrence on the training device.

For order k the reference walks the anchors in batch order and moves rows of D (a copy of P):
anchor i moves row t_i towards its positive mean (a = 0.2, b = 0.8) and every other cluster c
that has a group (c, a_i^k) towards that group's mean (a = 0.9, b = 0.1), each time
`D[r] <- normalize(a D[r] + b v)`. An update reads only its own row, and every vector it mixes in
is a mean of the row's own group sums (or P[r] when a positive set is empty). So row r stays in
span{P[r], S_g for the groups g of cluster r}, the *basis* of the row (m + 1 vectors, padded with
the zero sentinel group), and the recurrence runs on m + 1 coefficients per row from the basis'
Gram matrix: `|a x + b v|^2 = a^2 |x|^2 + b^2 |v|^2 + 2ab x.v`, with x.v read off the running
products of x with the basis.

Every row of every order is a lane; anchor i is step i of all lanes at once: a lane the anchor
does not touch takes the identity step (a = 1, b = 0, norm 1). That is B sequential steps of a
few element-wise kernels over K x C x (m + 1) numbers, with no output whose shape depends on the
batch: what the host-side event lists of the earlier version did with data-dependent sizes. The
coefficients are float64, as the host recurrence was; the Gram matrix comes in as float32 dot
products, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dsgl_cli.method.groups import IrrelevantGroups


def kl_events(groups: IrrelevantGroups, targets: Tensor, irre: Tensor, tau_re: float, tau1_re: float
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(E, a, b, first) of every (anchor i, order k, row r): the vector anchor i mixes into row r, as
    coefficients over the row's basis (B x K x C x (m + 1), float64), its weights a and b (B x K x C),
    and whether it is the row's first move in that order (B x K x C, bool). Anchor-major, so that step
    i of the recurrence reads contiguous slices.

    Positive (r = t_i): the mean of cluster t_i's groups whose label is not a_i^k, or P[t_i] when
    they hold no image. Negative (r != t_i): the mean of group (r, a_i^k) where it exists.
    """
    C, m = groups.num_clusters, groups.width
    B, K = irre.shape
    slot_label, slot_count, valid = groups.slot_label, groups.slot_count, groups.slot_valid   # C x m
    match = slot_label.view(1, 1, C, m) == irre.view(B, K, 1, 1)              # B x K x C x m
    is_pos = targets.view(B, 1, 1) == groups.cluster_ids.view(1, 1, C)         # B x 1 x C
    is_neg = match.any(-1) & ~is_pos                                           # B x K x C
    neg = match * groups.slot_inv_count.view(1, 1, C, m)
    # the positive set of anchor i in order k: the groups of t_i whose label is not a_i^k
    keep = valid[targets].view(B, 1, m) & (slot_label[targets].view(B, 1, m) != irre.view(B, K, 1))
    members = (keep * slot_count[targets].view(B, 1, m)).sum(-1, keepdim=True)        # B x K x 1
    pos = torch.cat([(members == 0).double(), keep / members.clamp(min=1.0)], -1)       # B x K x (m + 1)
    events = torch.where(is_pos.unsqueeze(-1), pos.unsqueeze(2), F.pad(neg, (1, 0)))
    a = torch.where(is_pos, 1.0 - tau_re, torch.where(is_neg, 1.0 - tau1_re, 1.0)).double()
    b = torch.where(is_pos, tau_re, torch.where(is_neg, tau1_re, 0.0)).double()
    moved = is_pos | is_neg
    first = moved & (moved.cumsum(0) == 1)
    return events, a, b, first


def kl_coefficients(gram: Tensor, events: Tensor, a: Tensor, b: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
    """(z, moved): D_k[r] = sum_j z[k, r, j] basis_r[j] (K x C x (m + 1), float64) and whether order k
    moved row r at all (K x C). `gram` is C x (m + 1) x (m + 1), basis_r[0] = P[r].

    The lane state is z. Step i: n^2 = a^2 s + b^2 e.G.e + 2ab z.(G e), where s = |P[r]|^2 before
    the row's first move and 1 after (the identity step has a = 1, b = 0 and so n = 1); then
    z <- (a z + b e) / n. G e and every per-step constant are computed for all steps before the
    loop, so a step is four kernels over the K x C lanes.
    """
    B, K, C, w = events.shape
    g64 = gram.double()
    ge = torch.einsum("rjl,bkrl->bkrj", g64, events).contiguous()   # G e, every step at once
    self_sq = (events * ge).sum(-1)                                  # |v|^2
    start = g64[:, 0, 0].view(1, 1, C)
    const = (a * a * torch.where(first, start, torch.ones_like(start)) + b * b * self_sq).reshape(B, K * C, 1, 1)
    # per step, lanes (k, r) flattened: n^2 = const + z . (2ab G e), z <- (keep z + mix) / n
    cross_ge = (ge * (2 * a * b).unsqueeze(-1)).reshape(B, K * C, w, 1)
    keep = a.reshape(B, K * C, 1, 1)
    mix = (events * b.unsqueeze(-1)).reshape(B, K * C, 1, w)
    z = torch.zeros(K * C, 1, w, dtype=torch.float64, device=gram.device)
    z[:, :, 0] = 1.0                                                            # D_k[r] starts at P[r]
    for i in range(B):
        norm_sq = torch.baddbmm(const[i], z, cross_ge[i])
        z = torch.addcmul(mix[i], keep[i], z).mul_(norm_sq.rsqrt_())
    moved = (b > 0).any(0)
    return z.view(K, C, w), moved
