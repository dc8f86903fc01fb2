"""DBSCAN on the sparse Jaccard distance and the per-epoch pseudo-label bookkeeping (method.md 4.3-4.6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components

from dsgl_cli.clustering.jaccard import MAX_DISTANCE_ATTR
from dsgl_cli.errors import DsglError

Labels = Union[np.ndarray, torch.Tensor]


def _labels_numpy(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


def dbscan(
    dist: Union[sp.spmatrix, np.ndarray],
    eps: float,
    min_samples: int = 4,
    max_distance: Optional[float] = None,
) -> np.ndarray:
    """DBSCAN labels (-1 = outlier) identical to sklearn's ``DBSCAN(metric='precomputed')`` (4.3).

    ``dist`` is dense or sparse; in a sparse matrix an absent pair counts as farther than eps,
    so eps may not exceed the ``max_distance`` the matrix was built with (read from the matrix
    attribute set by ``compute_jaccard_distance`` unless given). Cores are points with at least
    ``min_samples`` neighbours within eps (themselves included); clusters are the connected
    components of cores, numbered by their smallest core index; a border point joins the
    lowest-numbered cluster among its core neighbours, exactly as sklearn's scan order does.
    """
    if not 0.0 < eps < 1.0:
        raise DsglError(f"--eps must lie strictly between 0 and 1 (Jaccard distance), got {eps}", exit_code=2)
    if min_samples < 1:
        raise DsglError(f"min_samples must be at least 1, got {min_samples}", exit_code=2)
    n = dist.shape[0]
    limit = max_distance if max_distance is not None else getattr(dist, MAX_DISTANCE_ATTR, None)
    if limit is not None and eps > limit:
        raise DsglError(
            f"eps {eps} exceeds the max_distance {limit} the Jaccard matrix was built with; "
            f"rebuild it with max_distance >= eps"
        )
    if sp.issparse(dist):
        m = sp.csr_matrix(dist)
        rows = np.repeat(np.arange(n), np.diff(m.indptr))
        keep = m.data <= eps
        r, c = rows[keep], m.indices[keep]
        # like sklearn, an absent diagonal entry counts as distance 0 (a point is its own neighbour)
        off = r != c
        own = np.flatnonzero(m.diagonal() <= eps)
        r, c = np.concatenate([r[off], own]), np.concatenate([c[off], own])
    else:
        d = np.asarray(dist)
        r, c = np.nonzero(d <= eps)
    graph = sp.csr_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n, n))
    graph.data[:] = 1
    core = np.diff(graph.indptr) >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not core.any():
        return labels
    core_idx = np.flatnonzero(core)
    core_graph = graph[core_idx][:, core_idx]
    _, comp = connected_components(core_graph, directed=False)
    # number components in order of their smallest core index (sklearn's scan order)
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp, core_idx)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    labels[core_idx] = rank[comp]
    # border points: lowest cluster label among core neighbours
    gc = graph.tocoo()
    border = ~core[gc.row] & core[gc.col]
    if border.any():
        cand = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(cand, gc.row[border], labels[gc.col[border]])
        hit = cand != np.iinfo(np.int64).max
        labels[hit] = cand[hit]
    return labels


@dataclass
class PseudoLabelSummary:
    """How an epoch's clustering came out: clusters, outliers, clustered images."""

    num_clusters: int
    num_outliers: int
    num_clustered: int

    def to_dict(self) -> dict:
        return asdict(self)


def pseudo_label_summary(labels: Labels) -> PseudoLabelSummary:
    """Number of clusters / outliers / clustered images of a label vector (-1 = outlier)."""
    y = _labels_numpy(labels)
    clustered = y >= 0
    return PseudoLabelSummary(
        num_clusters=int(np.unique(y[clustered]).size),
        num_outliers=int((~clustered).sum()),
        num_clustered=int(clustered.sum()),
    )


def outlier_unique_labels(labels: Labels) -> np.ndarray:
    """Pseudo labels where each outlier gets its own id C, C+1, ... in index order (4.4, used by L_kl)."""
    y = _labels_numpy(labels).copy()
    outliers = np.flatnonzero(y < 0)
    num_clusters = int(y.max()) + 1 if (y >= 0).any() else 0
    y[outliers] = num_clusters + np.arange(outliers.size)
    return y


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


def init_memory_bank(centroids: torch.Tensor) -> torch.Tensor:
    """Memory bank M (2C x d): normalize(centroids) twice, hard prototypes then mean prototypes (4.5)."""
    protos = F.normalize(centroids, dim=1)
    return torch.cat([protos, protos], dim=0).contiguous()


def irrelevant_labels(
    features: torch.Tensor,
    labels: Labels,
    mean_prototypes: torch.Tensor,
    temp: float = 0.05,
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
