"""DSGL per-iteration memory: hybrid cluster memory (hard H + mean P), instance memory I (method.md 4.5-5).

`losses()` is a pure function of the state and the batch (its prototypes come from the batch plan,
`batch_plan.py`); `update()` is the explicit memory step after `optimizer.step()`. For DLhybrid the
memory also keeps the per-group and per-cluster sums of the instance memory and the Gram matrices
of the L_kl bases that the plan reads, built once per epoch and kept current by the rows
`update()` writes. Both run in fixed shapes on the memory's device, with no host round trip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dsgl_cli.clustering.memory_init import init_memory_bank
from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.method import FIXED_TEMPERATURE, MEMORY_BANKS
from dsgl_cli.method.batch_plan import (
    BatchTables,
    MemoryTables,
    RowTable,
    basis_gram,
    batch_tables,
    kl_tables,
    last_of_class,
    plan_batch,
)
from dsgl_cli.method.groups import IrrelevantGroups
from dsgl_cli.method.losses import cluster_memory_loss, dsgl_losses, scores

#: clusters whose basis Gram matrices are built at once at the start of an epoch (C x (m+1) x d each)
_GRAM_CHUNK = 256


def _normalize(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class _Rows:
    """A memory table kept in a `RowTable`: reading gives the table, assigning replaces it, and
    `memory._name.write_(...)` writes a batch's rows in place (no copy of an N x d table per step)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Tensor:
        return getattr(obj, self.key).data

    def __set__(self, obj: Any, value: Tensor) -> None:
        setattr(obj, self.key, RowTable(value))


class DSGLMemory:
    """Hybrid cluster memory (hard half H, mean half P), instance memory I and per-epoch labels."""

    instance = _Rows()       # N x d, I
    bank = _Rows()           # 2C x d (DLhybrid: H then P) or C x d
    group_sums = _Rows()     # (G + 1) x d
    cluster_sums = _Rows()   # C x d
    gram = _Rows()           # C x (m + 1) x (m + 1)
    _instance: RowTable
    _bank: RowTable
    _group_sums: RowTable
    _cluster_sums: RowTable
    _gram: RowTable

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
            self.groups = IrrelevantGroups.build(self.labels, self.irrelevant[:, 0], C)
            self._build_sums()

    # ------------------------------------------------------------------ state
    def _build_sums(self, group_sums: Tensor | None = None) -> None:
        """Group sums (or the given ones), cluster sums from them, and every row's basis Gram matrix."""
        gr = self.irrelevant_groups
        d = self.instance.shape[1]
        if group_sums is None:
            group_sums = torch.zeros(gr.num_groups + 1, d, device=self.device).index_add_(
                0, gr.group_of, self.instance)
            group_sums[gr.num_groups] = 0.0                            # the outliers' sentinel stays empty
        self.group_sums = group_sums
        self.cluster_sums = torch.zeros(self.num_clusters, d, device=self.device).index_add_(
            0, gr.cluster[:-1], group_sums[:-1])
        P, m = self.mean_prototypes, gr.width
        gram = torch.empty(self.num_clusters, m + 1, m + 1, device=self.device)
        for start in range(0, self.num_clusters, _GRAM_CHUNK):
            rows = slice(start, start + _GRAM_CHUNK)
            basis = torch.cat([P[rows].unsqueeze(1), group_sums[gr.cluster_groups[rows]]], 1)
            gram[rows] = basis @ basis.transpose(1, 2)
        self.gram = gram

    @property
    def irrelevant_groups(self) -> IrrelevantGroups:
        """The group tables of the DLhybrid memory (the CM baselines have none)."""
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

    def tables(self) -> MemoryTables:
        """What the batch plan reads, as arguments."""
        return MemoryTables(self.instance, self.mean_prototypes, self.group_sums, self.cluster_sums, self.gram,
                            self.irrelevant_groups)

    def state_dict(self) -> dict[str, Any]:
        """Everything the memory holds, as tensors and numbers (an interrupted epoch resumes from it)."""
        dl = self.groups is not None
        return {"mode": self.mode, "temp": self.temp, "momentum": self.momentum, "tau_dis": self.tau_dis,
                "tau_re": self.tau_re, "tau1_re": self.tau1_re, "smooth": self.smooth, "labels": self.labels,
                "instance": self.instance.clone(), "bank": self.bank.clone(), "irrelevant": self.irrelevant,
                "group_sums": self.group_sums.clone() if dl else None,
                "cluster_sums": self.cluster_sums.clone() if dl else None, "gram": self.gram.clone() if dl else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "DSGLMemory":
        """The memory `state_dict` describes, on ``device``, bit for bit (the running sums and Gram
        matrices are restored, not recomputed, so their rounding is the one the interrupted run had)."""
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
            memory.groups = IrrelevantGroups.build(memory.labels, memory.irrelevant[:, 0], memory.num_clusters)
            sums = state["group_sums"].to(device)
            if sums.shape[0] == memory.groups.num_groups:     # a checkpoint from before the sentinel row
                sums = torch.cat([sums, sums.new_zeros(1, sums.shape[1])])
            memory._build_sums(sums)
            if state.get("cluster_sums") is not None and state.get("gram") is not None:
                memory.cluster_sums = state["cluster_sums"].to(device)
                memory.gram = state["gram"].to(device)
        return memory

    def to(self, device: torch.device | str) -> "DSGLMemory":
        """Move the whole memory (bank, instance memory, labels, sums, tables) to `device`."""
        device = torch.device(device)
        self.device = device
        self.labels, self.instance, self.bank = self.labels.to(device), self.instance.to(device), self.bank.to(device)
        if self.irrelevant is not None:
            self.irrelevant = self.irrelevant.to(device)
        if self.groups is not None:
            self.group_sums, self.cluster_sums = self.group_sums.to(device), self.cluster_sums.to(device)
            self.gram = self.gram.to(device)
        if self.groups is not None:
            self.groups = self.groups.to(device)
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
        targets = targets.to(self.device)
        if self.mode != "DLhybrid":
            zero = torch.zeros((), dtype=f.dtype, device=f.device)
            loss_m = cluster_memory_loss(scores(f, self.bank) / self.temp, targets, self.smooth)
            return {"loss_m": loss_m, "loss_dis": zero, "loss_kl": zero}
        if f_hat is None:
            raise DsglError("DLhybrid memory needs the partner embeddings f_hat for L_kl")
        idx = idx.to(self.device)
        if irre is None:
            assert self.irrelevant is not None   # a DLhybrid memory always has its irrelevant labels
            irre = self.irrelevant[idx]
        else:
            irre = irre.to(self.device)
        tables = self.tables()
        plan, _ = plan_batch(tables, f.detach().float(), idx, targets, irre, temp=self.fixed_temp,
                             temp_m=self.temp, tau_dis=self.tau_dis, tau_re=self.tau_re, tau1_re=self.tau1_re,
                             smooth=self.smooth)
        loss_m, passes, kls = dsgl_losses(f, f_hat, self.bank, self.group_sums, plan)
        out: dict[str, Tensor] = {"loss_m": loss_m, "loss_dis": passes.mean(), "loss_kl": kls.mean(),
                                  "loss_dis_pass0": passes[0], "loss_dis_pass1": passes[1]}
        for k in range(kls.numel()):
            out[f"loss_kl_k{k}"] = kls[k]
        if details:
            with torch.no_grad():
                for k, table in enumerate(kl_tables(tables, plan)):
                    out[f"re_dist_proto_k{k}"] = table
                assert plan.positives is not None
                out["dis_pos_proto0"], out["dis_pos_proto1"] = plan.positives[0], plan.positives[1]
        return out

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None:
        """Prototype update (hard / mean, method.md 5.1 and 5.5) and the instance write I[idx] = f.

        Every anchor computes its cluster's new rows; only the cluster's last anchor writes them
        (`RowTable`), so the result has no duplicate writes and no data-dependent shape.
        """
        f = f.detach().to(device=self.device, dtype=self.bank.dtype)
        idx, targets = idx.to(self.device), targets.to(self.device)
        C, m = self.num_clusters, self.momentum
        if self.mode == "CM":
            # one sample at a time in batch order (Cluster Contrast's cm, method.md 5.5)
            bank = self.bank
            for i in range(f.shape[0]):
                row = targets[i : i + 1]
                bank.index_copy_(0, row, _normalize(m * bank.index_select(0, row) + (1 - m) * f[i : i + 1]))
            self._instance.write_(idx, last_of_class(idx.view(-1, 1) == idx.view(1, -1)), f)
            return
        tables = self.tables() if self.groups is not None else None
        bt = batch_tables(tables, f, idx, targets) if tables is not None else None
        if bt is not None:
            same, last, written = bt.same_cluster, bt.last_of_cluster, bt.written
        else:
            same = targets.view(-1, 1) == targets.view(1, -1)
            last, written = last_of_class(same), last_of_class(idx.view(-1, 1) == idx.view(1, -1))
        # hard: j* = the least similar sample of the cluster, the first one on ties (argmin keeps the first)
        H = self.bank[targets]
        sims = (f * H).sum(1)
        j_star = torch.where(same, sims.view(1, -1), torch.full_like(sims, float("inf")).view(1, -1)).argmin(1)
        new_h = _normalize(m * H + (1 - m) * f[j_star])
        if self.mode == "DLhybrid":
            assert tables is not None
            means = (same.to(f.dtype) / same.sum(1, keepdim=True)) @ f
            new_p = _normalize(m * self.bank[targets + C] + (1 - m) * means)
            self._bank.write_(targets + C, last, new_p)
            assert bt is not None
            self._write_sums(tables, bt, targets, self.mean_prototypes)
        self._bank.write_(targets, last, new_h)
        self._instance.write_(idx, written, f)

    def _write_sums(self, tables: MemoryTables, bt: BatchTables, targets: Tensor, new_means: Tensor) -> None:
        """Group and cluster sums after the write, and the batch clusters' Gram matrices at the new P."""
        self._gram.write_(targets, bt.last_of_cluster, basis_gram(tables, bt, targets, new_means))
        self._group_sums.write_(bt.group, bt.last_of_group, self.group_sums[bt.group] + bt.group_delta)
        self._cluster_sums.write_(targets, bt.last_of_cluster, self.cluster_sums[targets] + bt.cluster_delta)
