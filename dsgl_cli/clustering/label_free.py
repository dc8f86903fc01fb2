"""Figures of a clustering that need no true identities: for data nobody labelled.

On a user's own cameras there is no precision or ARI against true ids (``quality.py``), yet one
still wants to choose eps and watch training. These figures come from the pseudo labels (-1 =
outlier), the cameras and the (unit) features alone; ``dsgl cluster`` prints them per eps and the
trainer can log them per epoch. All are O(N d): no N x N matrix is built.

- ``num_clusters``, ``num_outliers``, ``outlier_fraction`` (outliers / images).
- ``multi_camera_fraction``: the share of clusters whose images come from more than one camera.
  Re-ID clusters are meant to join one person *across* cameras; a clustering whose clusters stay
  inside one camera has grouped by background or colour cast.
- ``mean_intra_similarity``: for each cluster c of size n_c >= 2, the mean cosine similarity over its
  n_c (n_c - 1) ordered pairs of distinct images, ``s_c = (||sum_i f_i||^2 - n_c) / (n_c (n_c - 1))``
  with the rows f_i scaled to unit length; then the plain mean of s_c over those clusters (each
  cluster counts once, whatever its size). None when no cluster has two images.
- ``agreement_ari`` and ``agreement_nmi``: scikit-learn's adjusted Rand index and normalised mutual
  information between this labelling and a previous one (the previous epoch, or the neighbouring
  eps of a sweep), computed on exactly the images that are clustered (label >= 0) in *both*;
  ``agreement_images`` says how many. None without a previous labelling or with fewer than two
  such images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

ArrayLike = Union[np.ndarray, torch.Tensor, list]


@dataclass(frozen=True)
class LabelFreeFigures:
    """One clustering's figures that need no true ids (definitions in the module docstring)."""

    num_images: int
    num_clusters: int
    num_outliers: int
    outlier_fraction: float
    multi_camera_fraction: Optional[float]   # None when there is no cluster
    mean_intra_similarity: Optional[float]
    agreement_ari: Optional[float] = None
    agreement_nmi: Optional[float] = None
    agreement_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x: ArrayLike, what: str) -> np.ndarray:
    y = _numpy(x).reshape(-1)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{what} must be integers (-1 for an outlier)")
    return y.astype(np.int64)


def multi_camera_fraction(labels: np.ndarray, cameras: ArrayLike) -> Optional[float]:
    """Share of clusters (label >= 0) holding images of at least two distinct cameras."""
    cams = np.unique(_numpy(cameras).reshape(-1), return_inverse=True)[1].astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return None
    pairs = np.unique(np.stack([labels[keep], cams[keep]], axis=1), axis=0)   # distinct (cluster, camera)
    cams_per_cluster = np.unique(pairs[:, 0], return_counts=True)[1]
    return float(np.mean(cams_per_cluster > 1))


def mean_intra_similarity(labels: np.ndarray, features: ArrayLike) -> Optional[float]:
    """Mean over clusters of size >= 2 of the mean cosine similarity of their distinct pairs.

    Per-cluster sums of the rows come from one ``index_add_`` on the features' own device (the
    trainer's are on the GPU: only the C x d sums travel to the host): O(N d) time, C x d memory;
    rows are rescaled to unit length only where they are not already.
    """
    f = features.detach() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if f.ndim != 2:
        raise ValueError(f"features must be N x d, got shape {tuple(f.shape)}")
    keep = np.flatnonzero(labels >= 0)
    if not keep.size:
        return None
    f = f[torch.from_numpy(keep).to(f.device)].float()
    norms = f.norm(dim=1, keepdim=True)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        f = f / norms.clamp_min(1e-12)
    ids, dense = np.unique(labels[keep], return_inverse=True)
    dense = dense.ravel()
    sums_t = torch.zeros(ids.size, f.shape[1], device=f.device).index_add_(0, torch.from_numpy(dense).to(f.device), f)
    sums = sums_t.double().cpu().numpy()
    sizes = np.bincount(dense, minlength=ids.size).astype(np.float64)
    pairs = sizes > 1
    if not pairs.any():
        return None
    n = sizes[pairs]
    per_cluster = ((sums[pairs] ** 2).sum(axis=1) - n) / (n * (n - 1))
    return float(per_cluster.mean())


def agreement(labels: np.ndarray, previous: np.ndarray) -> tuple[Optional[float], Optional[float], int]:
    """(ARI, NMI, images) between two labellings over the images clustered in both."""
    both = (labels >= 0) & (previous >= 0)
    count = int(both.sum())
    if count < 2:
        return None, None, count
    a, b = labels[both], previous[both]
    return float(adjusted_rand_score(b, a)), float(normalized_mutual_info_score(b, a)), count


def label_free_figures(
    pseudo_labels: ArrayLike,
    cameras: ArrayLike,
    features: ArrayLike,
    previous: Optional[ArrayLike] = None,
) -> LabelFreeFigures:
    """The figures of one clustering of N images: labels (-1 outlier), cameras (ids or names), N x d features.

    ``previous`` is another labelling of the same N images, in the same order, to measure how much
    the clustering changed (its label numbers need not match).
    """
    labels = _labels(pseudo_labels, "pseudo labels")
    n = labels.size
    cams = _numpy(cameras).reshape(-1)
    feats = _numpy(features)   # once: a GPU tensor is copied to the host a single time
    rows = feats.shape[0] if feats.ndim else 0
    if cams.size != n or rows != n:
        raise ValueError(f"got {n} labels, {cams.size} cameras and {rows} feature rows; pass one per image")
    num_clusters = int(np.unique(labels[labels >= 0]).size)
    num_outliers = int((labels < 0).sum())
    ari = nmi = None
    common = 0
    if previous is not None:
        prev = _labels(previous, "previous labels")
        if prev.size != n:
            raise ValueError(f"the previous labelling has {prev.size} labels, this one {n}")
        ari, nmi, common = agreement(labels, prev)
    return LabelFreeFigures(
        num_images=n,
        num_clusters=num_clusters,
        num_outliers=num_outliers,
        outlier_fraction=num_outliers / n if n else 0.0,
        multi_camera_fraction=multi_camera_fraction(labels, cams),
        mean_intra_similarity=mean_intra_similarity(labels, feats),
        agreement_ari=ari,
        agreement_nmi=nmi,
        agreement_images=common,
    )
