"""DSGL per-iteration memory: hybrid cluster memory (hard H + mean P), instance memory I (method.md 4.5-5).

`losses()` is a pure function of the state and the batch (its prototypes come from the batch plan,
`batch_plan.py`); `update()` is the explicit memory step after `optimizer.step()`. For DLhybrid the
memory also keeps the per-group sums of the instance memory that the plan reads, built once per
epoch and kept current by the delta of the rows `update()` writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dsgl_cli.clustering.memory_init import init_memory_bank
from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.method import FIXED_TEMPERATURE, MEMORY_BANKS
from dsgl_cli.method.batch_plan import IrrelevantGroups, last_positions, plan_batch, to_device
from dsgl_cli.method.kl_tables import group_ranks
from dsgl_cli.method.losses import DSGLLossFunction, cluster_memory_loss


class DSGLMemory:
    """Hybrid cluster memory (hard half H, mean half P), instance memory I and per-epoch labels."""

    def __init__(self, features: Tensor, pseudo_labels: Tensor, irrelevant: Tensor | None,
                 centroids: Tensor, mode: str = "DLhybrid", temp: float = FIXED_TEMPERATURE,
                 momentum: float = 0.1, tau_dis: float = 0.5, tau_re: float = 0.8,
                 tau1_re: float = 0.1, smooth: bool = False) -> None:
        mode = check_choice(mode, MEMORY_BANKS, "-mb/--memorybank")
        N, d = features.shape
        C = centroids.shape[0]
        if pseudo_labels.shape != (N,) or centroids.shape[1] != d or C == 0:
            raise DsglError(
                f"memory: features {tuple(features.shape)}, labels {tuple(pseudo_labels.shape)} and "
                f"centroids {tuple(centroids.shape)} do not fit together; rebuild the epoch's clusters"
            )
        device = features.device
        self.mode = mode
        self.temp, self.momentum = float(temp), float(momentum)   # temp: L_m's (--temp)
        self.fixed_temp = FIXED_TEMPERATURE                        # L_dis and L_kl (method.md 5)
        self.smooth = bool(smooth)
        self.tau_dis, self.tau_re, self.tau1_re = float(tau_dis), float(tau_re), float(tau1_re)
        self.num_clusters = C
        self.device = device
        self.labels = pseudo_labels.to(device=device, dtype=torch.long)
        self.instance = features.detach().to(device=device, dtype=torch.float32, copy=True)
        self.bank = init_memory_bank(centroids.detach().to(device=device, dtype=torch.float32),
                                     hybrid=mode == "DLhybrid")
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
    def irrelevant_groups(self) -> IrrelevantGroups:
        """The group sums of the DLhybrid memory (the CM baselines have none)."""
        if self.groups is None:
            raise DsglError(f"the {self.mode} memory has no irrelevant groups; only DLhybrid plans L_dis and L_kl")
        return self.groups

    @property
    def hard_prototypes(self) -> Tensor:
        """Hard prototypes H (C x d); for CM modes the single prototype table."""
        return self.bank[: self.num_clusters]

    @property
    def mean_prototypes(self) -> Tensor:
        """Mean prototypes P (C x d); for CM modes the single prototype table."""
        return self.bank[self.num_clusters:] if self.mode == "DLhybrid" else self.bank

    def state_dict(self) -> dict[str, Any]:
        """Everything the memory holds, as tensors and numbers (an interrupted epoch resumes from it)."""
        return {"mode": self.mode, "temp": self.temp, "momentum": self.momentum, "tau_dis": self.tau_dis,
                "tau_re": self.tau_re, "tau1_re": self.tau1_re, "smooth": self.smooth, "labels": self.labels,
                "instance": self.instance, "bank": self.bank, "irrelevant": self.irrelevant,
                "group_sums": self.groups.sum if self.groups is not None else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "DSGLMemory":
        """The memory `state_dict` describes, on ``device``, bit for bit (the group sums are restored,
        not recomputed, so their rounding is the one the interrupted run had)."""
        memory = cls.__new__(cls)
        memory.mode, memory.smooth = str(state["mode"]), bool(state["smooth"])
        memory.temp, memory.momentum = float(state["temp"]), float(state["momentum"])
        memory.tau_dis, memory.tau_re, memory.tau1_re = (float(state[k]) for k in ("tau_dis", "tau_re", "tau1_re"))
        memory.fixed_temp = FIXED_TEMPERATURE
        memory.device = device
        memory.labels = state["labels"].to(device)
        memory.instance = state["instance"].to(device)
        memory.bank = state["bank"].to(device)
        memory.num_clusters = memory.bank.shape[0] // 2 if memory.mode == "DLhybrid" else memory.bank.shape[0]
        memory.irrelevant = state["irrelevant"].to(device) if state["irrelevant"] is not None else None
        memory.groups = None
        if memory.irrelevant is not None:
            memory.groups = IrrelevantGroups(memory.labels, memory.irrelevant[:, 0], memory.instance,
                                             memory.num_clusters)
            memory.groups.sum = state["group_sums"].to(device)
        return memory

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
        T = self.temp
        targets = targets.to(self.device)
        if self.mode != "DLhybrid":
            zero = torch.zeros((), dtype=f.dtype, device=f.device)
            loss_m = cluster_memory_loss(f @ self.bank.t() / T, targets, self.smooth)
            return {"loss_m": loss_m, "loss_dis": zero, "loss_kl": zero}
        if f_hat is None:
            raise DsglError("DLhybrid memory needs the partner embeddings f_hat for L_kl")
        idx = idx.to(self.device)
        if irre is None:
            assert self.irrelevant is not None   # a DLhybrid memory always has its irrelevant labels
            irre = self.irrelevant[idx]
        else:
            irre = irre.to(self.device)
        plan, extra = plan_batch(self, f.detach().float(), idx, targets, irre)
        loss_m, passes, kls = DSGLLossFunction.apply(f, f_hat, self.bank, plan)
        out: dict[str, Tensor] = {"loss_m": loss_m, "loss_dis": passes.mean(), "loss_kl": kls.mean(),
                                  "loss_dis_pass0": passes[0], "loss_dis_pass1": passes[1]}
        for k in range(kls.numel()):
            out[f"loss_kl_k{k}"] = kls[k]
        if details:
            P = self.mean_prototypes
            for k in range(kls.numel()):
                table_rows = plan.kl_c0[k].view(-1, 1) * P[plan.kl_rows] + plan.kl_cv[k] @ extra.vectors
                out[f"re_dist_proto_k{k}"] = P.index_copy(0, plan.kl_rows, table_rows)
            first = extra.pair_of[:, 0]
            out["dis_pos_proto0"], out["dis_pos_proto1"] = (m[first] for m in extra.positives)
        return out

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None:
        """Prototype update (hard / mean, method.md 5.1 and 5.5) and the instance write I[idx] = f."""
        f = f.detach().to(device=self.device, dtype=self.bank.dtype)
        B, C, m, device = f.shape[0], self.num_clusters, self.momentum, self.device
        idx_h, t_h = idx.cpu().numpy(), targets.cpu().numpy()
        clusters_h, inverse_h, counts_h = np.unique(t_h, return_inverse=True, return_counts=True)
        clusters, inverse = to_device(clusters_h, device), to_device(inverse_h, device)
        n = clusters_h.size
        if self.mode in ("DLhybrid", "CMhard"):
            # j* = the least similar sample of each cluster, first index on ties
            H = self.bank.index_select(0, clusters)
            sims = (f * H.index_select(0, inverse)).sum(dim=1).cpu().numpy()
            by_cluster = np.lexsort((np.arange(B), sims, inverse_h))
            j_star = by_cluster[np.searchsorted(inverse_h[by_cluster], np.arange(n))]
            v = m * H + (1 - m) * f.index_select(0, to_device(j_star, device))
            self.bank[clusters] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        if self.mode == "DLhybrid":
            rows = clusters + C
            means = torch.zeros(n, f.shape[1], dtype=f.dtype, device=device).index_add_(0, inverse, f)
            means /= to_device(counts_h, device, f.dtype).view(-1, 1)
            v = m * self.bank.index_select(0, rows) + (1 - m) * means
            self.bank[rows] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        if self.mode == "CM":
            # one sample at a time in batch order (Cluster Contrast's cm, method.md 5.5): step s moves
            # every cluster by its s-th sample, so a batch of 16 per cluster takes 16 small updates
            ranks = group_ranks(t_h)
            for step in range(int(ranks.max()) + 1 if ranks.size else 0):
                take = np.flatnonzero(ranks == step)
                rows = to_device(t_h[take], device)
                v = m * self.bank.index_select(0, rows) + (1 - m) * f.index_select(0, to_device(take, device))
                self.bank[rows] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        keep = last_positions(idx_h)                      # I[idx] = f, the last duplicate wins
        rows_w, f_w = to_device(idx_h[keep], device), f.index_select(0, to_device(keep, device))
        if self.groups is not None:                        # keep the group sums equal to sums of I
            gid = self.groups.group_of_h[idx_h[keep]]
            ok = to_device(gid >= 0, device, torch.bool)
            self.groups.sum.index_add_(0, to_device(gid, device)[ok], (f_w - self.instance.index_select(0, rows_w))[ok])
        self.instance[rows_w] = f_w
