"""Plain-loop reference of one DSGL iteration (method.md section 5), written from the spec for tests.

Deliberately slow and literal: per-anchor scans over all N images, sequential read-modify-write of
the L_kl table, per-cluster loops for the memory update. The package's vectorised code
(`dsgl_cli.method.memory`) must reproduce it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _mean_rows(rows: Tensor) -> Tensor:
    return rows.mean(dim=0)


def ref_dis_pass(f: Tensor, targets: Tensor, irre0_batch: Tensor, labels: Tensor, irre0: Tensor,
                 instance: Tensor, mean_protos: Tensor, temp: float, tau: float
                 ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One L_dis pass (5.2) against a given instance memory; returns (loss, m+ rows, negative lists)."""
    B = f.shape[0]
    pos = []
    negs = []
    for i in range(B):
        t, a = int(targets[i]), int(irre0_batch[i])
        members = torch.nonzero((labels == t) & (irre0 != a)).view(-1)
        pos.append(_mean_rows(instance[members]) if members.numel() else mean_protos[t].clone())
        rel = (irre0 == a) & (labels != t)
        clusters = sorted(set(labels[rel].tolist()))
        g = [_mean_rows(instance[rel & (labels == c)]) for c in clusters]
        negs.append(torch.stack(g) if g else mean_protos[a].clone().view(1, -1))
    q = mean_protos.clone()
    for i in range(B):
        t = int(targets[i])
        q[t] = (1 - tau) * mean_protos[t] + tau * pos[i]
    q = F.normalize(q, dim=1)
    o = f @ q.t() / temp
    losses = []
    for i in range(B):
        t = int(targets[i])
        extra = f[i] @ F.normalize(negs[i], dim=1).t() / temp
        log_den = torch.logsumexp(torch.cat([o[i], extra + torch.log(torch.tensor(tau))]), dim=0)
        losses.append(log_den - o[i, t])
    return torch.stack(losses).mean(), torch.stack(pos), negs


def ref_kl_table(targets: Tensor, irre_k: Tensor, labels: Tensor, irre0: Tensor, instance: Tensor,
                 mean_protos: Tensor, tau_re: float, tau1_re: float) -> Tensor:
    """The accumulated table D of L_kl (5.3) for one irrelevant-label order, anchor by anchor."""
    D = mean_protos.clone()
    for i in range(targets.shape[0]):
        t, a = int(targets[i]), int(irre_k[i])
        members = torch.nonzero((labels == t) & (irre0 != a)).view(-1)
        d_pos = _mean_rows(instance[members]) if members.numel() else mean_protos[t].clone()
        v = (1 - tau_re) * D[t] + tau_re * d_pos
        D[t] = v / v.norm()
        rel = (irre0 == a) & (labels != t)
        for c in sorted(set(labels[rel].tolist())):
            d_neg = _mean_rows(instance[rel & (labels == c)])
            v = (1 - tau1_re) * D[c] + tau1_re * d_neg
            D[c] = v / v.norm()
    return D


FIXED_TEMP = 0.05   # L_dis and L_kl: the reference hard-codes it; --temp is L_m's alone (method.md 5)


def ref_smoothed_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """The reference's top-k label-smoothed cross-entropy (method.md 5.1), one row at a time."""
    B, C = logits.shape
    K = C // 50
    losses = []
    for i in range(B):
        weights = torch.zeros(C, dtype=logits.dtype)
        if K > 1:
            for c in torch.topk(logits[i].detach(), K).indices.tolist():
                weights[c] += 0.1 / K
        else:
            weights += 0.1 / C
        weights[int(targets[i])] += 0.9
        losses.append(-(weights * F.log_softmax(logits[i], 0)).sum())
    return torch.stack(losses).mean()


def ref_losses(bank: Tensor, instance: Tensor, labels: Tensor, irrelevant: Tensor | None, f: Tensor,
               idx: Tensor, targets: Tensor, irre: Tensor | None, f_hat: Tensor | None,
               mode: str = "DLhybrid", temp: float = 0.05, tau_dis: float = 0.5, tau_re: float = 0.8,
               tau1_re: float = 0.1, smooth: bool = False) -> dict:
    """All losses of one iteration (5.1-5.3) from the memory before the update; nothing is mutated.

    ``temp`` is the temperature of L_m; L_dis and L_kl use the fixed 0.05.
    """
    C = bank.shape[0] // 2 if mode == "DLhybrid" else bank.shape[0]
    hard = bank[:C]
    logits = f @ hard.t() / temp
    out: dict = {"loss_m": ref_smoothed_ce(logits, targets) if smooth else F.cross_entropy(logits, targets)}
    if mode != "DLhybrid":
        return out
    temp = FIXED_TEMP
    mean_protos = bank[C:]
    irre0 = irrelevant[:, 0]
    l0, pos0, negs0 = ref_dis_pass(f, targets, irre[:, 0], labels, irre0, instance, mean_protos, temp, tau_dis)
    inst1 = instance.clone()
    for i in range(idx.shape[0]):
        inst1[int(idx[i])] = f[i].detach()
    l1, pos1, negs1 = ref_dis_pass(f, targets, irre[:, 0], labels, irre0, inst1, mean_protos, temp, tau_dis)
    out.update(loss_dis=(l0 + l1) / 2, loss_dis_pass0=l0, loss_dis_pass1=l1, dis_pos_proto0=pos0,
               dis_pos_proto1=pos1, dis_neg_protos0=negs0, dis_neg_protos1=negs1)
    log_q = F.log_softmax(f_hat @ mean_protos.t() / temp, dim=1)
    kls = []
    for k in range(irre.shape[1]):
        D = ref_kl_table(targets, irre[:, k], labels, irre0, inst1, mean_protos, tau_re, tau1_re)
        p = F.softmax(f @ D.t() / temp, dim=1)
        kl = (p * (torch.log(p) - log_q)).sum(dim=1).mean()
        out[f"loss_kl_k{k}"] = kl
        out[f"re_dist_proto_k{k}"] = D
        kls.append(kl)
    out["loss_kl"] = sum(kls) / len(kls)
    return out


def ref_update(bank: Tensor, instance: Tensor, f: Tensor, idx: Tensor, targets: Tensor,
               mode: str = "DLhybrid", momentum: float = 0.1) -> tuple[Tensor, Tensor]:
    """Memory update after the step (5.1, 5.5): returns new (bank, instance)."""
    f = f.detach()
    bank = bank.clone()
    instance = instance.clone()
    C = bank.shape[0] // 2 if mode == "DLhybrid" else bank.shape[0]
    old = bank.clone()
    order: list[int] = []
    for t in targets.tolist():
        if t not in order:
            order.append(t)
    if mode == "CM":   # one sample at a time, in batch order (Cluster Contrast's cm, method.md 5.5)
        for j in range(f.shape[0]):
            k = int(targets[j])
            v = momentum * bank[k] + (1 - momentum) * f[j]
            bank[k] = v / v.norm()
    for k in order:
        rows = [j for j in range(f.shape[0]) if int(targets[j]) == k]
        if mode in ("DLhybrid", "CMhard"):
            sims = [float(torch.dot(f[j], old[k])) for j in rows]
            j_star = rows[min(range(len(rows)), key=lambda r: (sims[r], r))]
            v = momentum * old[k] + (1 - momentum) * f[j_star]
            bank[k] = v / v.norm()
        if mode == "DLhybrid":
            row = C + k
            v = momentum * old[row] + (1 - momentum) * f[rows].mean(dim=0)
            bank[row] = v / v.norm()
    for i in range(idx.shape[0]):
        instance[int(idx[i])] = f[i]
    return bank, instance
