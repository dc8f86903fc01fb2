"""Once per epoch: features -> Jaccard distance -> DBSCAN -> pseudo labels (method.md section 4)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from dsgl_cli.clustering.label_free import LabelFreeFigures, label_free_figures
from dsgl_cli.clustering.quality import LabelQuality, label_quality
from dsgl_cli.errors import DsglError


@dataclass
class EpochLabels:
    """What one round of clustering gives the epoch's training."""

    labels: np.ndarray                 # N, -1 = outlier
    num_clusters: int
    num_outliers: int
    centroids: torch.Tensor            # C x d, plain means
    irrelevant: Optional[torch.Tensor]  # N x 2 (DLhybrid only)
    seconds: float
    quality: Optional[LabelQuality] = None  # against the hidden train ids, where known
    label_free: Optional[LabelFreeFigures] = None   # figures that need no ids (label_free.py)
    eps: Optional[float] = None        # the eps DBSCAN used (chosen by the rule under --eps auto)


def make_pseudo_labels(
    features: torch.Tensor,
    eps: Union[float, str],
    k1: int = 30,
    k2: int = 6,
    min_samples: int = 4,
    with_irrelevant: bool = True,
    true_ids: Optional[np.ndarray] = None,
    cameras: Optional[np.ndarray] = None,
    previous: Optional[np.ndarray] = None,
    epoch: Optional[int] = None,
    **distance: Any,
) -> EpochLabels:
    """Cluster the epoch's features; too few clusters is a clear error suggesting a larger eps.

    With ``true_ids`` the labels are scored against them (diagnostics only); with ``cameras`` the
    figures that need no ids are computed too, agreement with the ``previous`` epoch's labels included.
    ``distance`` holds the --jaccard settings (``clustering_distance``; camera-aware reads ``cameras``
    and the training ``epoch``); ``eps="auto"`` chooses eps by the rule of ``eps_auto.py``.
    """
    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.distance import clustering_distance
    from dsgl_cli.clustering.eps_auto import choose_eps
    from dsgl_cli.clustering.memory_init import cluster_centroids, init_memory_bank, irrelevant_labels

    start = time.perf_counter()
    auto = isinstance(eps, str)
    matrix = clustering_distance(features, k1=k1, k2=k2, cameras=cameras, epoch=epoch,
                                 max_distance=0.95 if auto else max(0.95, float(eps)), **distance)
    if auto:
        choice = choose_eps(matrix, lambda e: dbscan(matrix, eps=e, min_samples=min_samples))
        used, labels = choice.eps, choice.labels
    else:
        used = float(eps)
        labels = dbscan(matrix, eps=used, min_samples=min_samples)
    num_clusters = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    num_outliers = int((labels < 0).sum())
    # DLhybrid's identity-irrelevant labels need two clusters besides each image's own.
    needed = 3 if with_irrelevant else 2
    if num_clusters < needed:
        larger = min(0.95, round(used + 0.1, 2))
        raise DsglError(
            f"--eps {used}{' (auto)' if auto else ''} leaves {num_clusters} cluster(s) and {num_outliers} outlier(s) "
            f"among {len(labels)} images, fewer than the {needed} training needs; try a larger --eps (e.g. {larger})"
        )
    labels_t = torch.as_tensor(labels, device=features.device)
    centroids = cluster_centroids(features, labels_t)
    irrelevant = None
    if with_irrelevant:
        bank = init_memory_bank(centroids)
        irrelevant = irrelevant_labels(features, labels_t, bank[num_clusters:], k=2)   # at 0.05, not --temp
    quality = label_quality(labels, true_ids) if true_ids is not None else None
    free = label_free_figures(labels, cameras, features, previous) if cameras is not None else None
    return EpochLabels(labels, num_clusters, num_outliers, centroids, irrelevant,
                       time.perf_counter() - start, quality, free, used)
