"""Memory initialisation of each epoch (method.md 4.5-4.6): centroids, the hybrid bank, irrelevant labels."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from dsgl_cli.errors import DsglError
from dsgl_cli.method import FIXED_TEMPERATURE

Labels = Union[np.ndarray, torch.Tensor]


def _labels_numpy(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


def cluster_centroids(features: torch.Tensor, labels: Labels) -> torch.Tensor:
    """Plain (un-normalised) mean feature of each cluster 0..C-1, outliers ignored (4.5)."""
    y = torch.as_tensor(_labels_numpy(labels), device=features.device)
    keep = y >= 0
    if not bool(keep.any()):
        raise DsglError("clustering produced no clusters (all outliers); try a larger --eps")
    num_clusters = int(y.max()) + 1
    feats = features[keep].float()
    sums = torch.zeros(num_clusters, features.shape[1], dtype=feats.dtype, device=features.device)
    sums.index_add_(0, y[keep], feats)
    counts = torch.bincount(y[keep], minlength=num_clusters).to(feats.dtype)
    return (sums / counts.clamp_min(1)[:, None]).to(features.dtype)


def init_memory_bank(centroids: torch.Tensor, hybrid: bool = True) -> torch.Tensor:
    """Memory bank (4.5): normalize(centroids) twice for the hybrid memory (hard prototypes H, then
    mean prototypes P: 2C x d), once for the one-prototype baselines CM and CMhard (C x d)."""
    protos = F.normalize(centroids, dim=1)
    return torch.cat([protos, protos], dim=0).contiguous() if hybrid else protos.contiguous()


def irrelevant_labels(
    features: torch.Tensor,
    labels: Labels,
    mean_prototypes: torch.Tensor,
    temp: float = FIXED_TEMPERATURE,
    k: int = 2,
) -> torch.Tensor:
    """Identity-irrelevant labels (N x k): the k most probable *other* clusters under
    softmax(f . P^T / T), descending; -1 for outliers and where fewer than k others exist (4.6)."""
    y = torch.as_tensor(_labels_numpy(labels), device=features.device)
    num_clusters = mean_prototypes.shape[0]
    prob = torch.softmax(features.float() @ mean_prototypes.float().T / temp, dim=1)
    clustered = y >= 0
    own = y.clamp_min(0)
    prob = prob.scatter(1, own[:, None], float("-inf"))
    take = min(k, max(0, num_clusters - 1))
    out = torch.full((features.shape[0], k), -1, dtype=torch.long, device=features.device)
    if take > 0:
        out[:, :take] = prob.topk(take, dim=1).indices
    out[~clustered] = -1
    return out
