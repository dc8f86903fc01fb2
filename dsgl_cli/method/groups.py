"""The epoch's irrelevant groups as fixed-shape tables on the training device (method.md 5.2-5.3).

Every prototype of L_dis and L_kl is a mean of instance-memory rows over a union of *irrelevant
groups* g = (pseudo label y_n, column-0 irrelevant label a_n^0). The tables here say which images,
clusters and labels each group has. They are built once per epoch, when the pseudo labels are
made, and a step only indexes them with the batch's tensors: no host bookkeeping, no output whose
shape depends on the batch.

Shapes: G groups sorted by (cluster, label), plus one *sentinel* group G that stands for "no such
group" (no images, zero sum); C clusters; m = the most groups one cluster has. `cluster_groups`
lists each cluster's groups, padded with the sentinel, so a cluster's prototypes are a
combination of m group sums and its P row (the L_kl basis, `kl_recurrence.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class IrrelevantGroups:
    """Integer tables of one epoch's groups; every tensor lives on the training device."""

    num_clusters: int
    group_of: Tensor          # N, each image's group (the sentinel G for outliers)
    key: Tensor               # G, cluster * C + label, ascending (looked up with searchsorted)
    cluster: Tensor           # G + 1, each group's cluster (-1 for the sentinel)
    label: Tensor             # G + 1, each group's irrelevant label a^0 (-1 for the sentinel)
    count: Tensor             # G + 1 float, images per group (0 for the sentinel)
    slot: Tensor              # G + 1, each group's position in its cluster's row of `cluster_groups`
    cluster_groups: Tensor    # C x m, each cluster's groups, padded with the sentinel
    cluster_count: Tensor     # C float, images per cluster

    def __post_init__(self) -> None:
        # per-slot views of the cluster table that every step reads (made once per epoch, not per step)
        self.slot_label = self.label[self.cluster_groups]                         # -1 on padding
        self.slot_valid = self.cluster_groups < self.num_groups
        self.slot_count = self.count[self.cluster_groups].double()
        self.slot_inv_count = torch.where(self.slot_valid, 1.0 / self.slot_count.clamp(min=1.0),
                                          torch.zeros_like(self.slot_count))
        self.cluster_ids = torch.arange(self.num_clusters, device=self.key.device)
        self.group_ids = torch.arange(self.num_groups + 1, device=self.key.device)

    @property
    def num_groups(self) -> int:
        """G, the real groups; index G is the sentinel."""
        return self.key.numel()

    @property
    def width(self) -> int:
        """m, the most groups of one cluster."""
        return self.cluster_groups.shape[1]

    @classmethod
    def build(cls, labels: Tensor, irre0: Tensor, num_clusters: int) -> "IrrelevantGroups":
        """Tables from the pseudo labels and the column-0 irrelevant labels (once per epoch)."""
        C, device = num_clusters, labels.device
        clustered = labels >= 0
        keys = torch.where(clustered, labels * C + irre0.clamp(min=0), torch.full_like(labels, -1))
        ukeys, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        real = ukeys >= 0
        offset = int((~real).sum())                      # the outliers' key -1 sorts first
        key = ukeys[offset:]
        G = key.numel()
        group_of = torch.where(clustered, inverse - offset, torch.full_like(inverse, G))
        sentinel = torch.full((1,), -1, dtype=torch.long, device=device)
        cluster = torch.cat([key // C, sentinel])
        label = torch.cat([key % C, sentinel])
        count = torch.cat([counts[offset:].to(torch.float32), torch.zeros(1, device=device)])
        # position of each group among its cluster's (groups are sorted by cluster)
        first = torch.searchsorted(key, torch.arange(C, device=device) * C)
        slot = torch.cat([torch.arange(G, device=device) - first[key // C], torch.zeros(1, dtype=torch.long,
                                                                                        device=device)])
        per_cluster = torch.bincount(key // C, minlength=C)
        m = max(1, int(per_cluster.max())) if G else 1
        cluster_groups = torch.full((C, m), G, dtype=torch.long, device=device)
        if G:
            cluster_groups[key // C, slot[:G]] = torch.arange(G, device=device)
        cluster_count = torch.bincount(labels[clustered], minlength=C).to(torch.float32)
        return cls(C, group_of, key, cluster, label, count, slot, cluster_groups, cluster_count)

    def lookup(self, clusters: Tensor, labels: Tensor) -> Tensor:
        """The group (cluster, label) for each pair, or the sentinel where there is none (any shape)."""
        G = self.num_groups
        if G == 0:
            return torch.full_like(clusters, 0)
        wanted = clusters * self.num_clusters + labels
        at = torch.searchsorted(self.key, wanted.reshape(-1)).clamp_(max=G - 1).view(wanted.shape)
        return torch.where(self.key[at] == wanted, at, torch.full_like(at, G))

    def to(self, device: torch.device) -> "IrrelevantGroups":
        """The same tables on `device`."""
        return IrrelevantGroups(self.num_clusters, *(getattr(self, name).to(device) for name in (
            "group_of", "key", "cluster", "label", "count", "slot", "cluster_groups", "cluster_count")))
