"""The clustering distance a run asked for (--jaccard): the paper's k-reciprocal Jaccard or CA-Jaccard."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp
import torch

from dsgl_cli.errors import DsglError

Features = Union[torch.Tensor, np.ndarray]


def clustering_distance(
    features: Features,
    jaccard: str = "kreciprocal",
    k1: int = 30,
    k2: int = 6,
    k1_intra: int = 5,
    k1_inter: int = 20,
    k2_intra: int = 2,
    k2_inter: int = 4,
    cameras: Optional[Any] = None,
    epoch: Optional[int] = None,
    max_distance: float = 0.95,
) -> sp.csr_matrix:
    """Sparse Jaccard distance of the features (pairs within ``max_distance``).

    ``camera-aware`` needs one camera id per image and applies the reference's warm-up (3/3
    expansion) when ``epoch`` is 0; ``epoch=None`` (outside training) uses the sizes given.
    """
    if jaccard == "kreciprocal":
        from dsgl_cli.clustering.jaccard import compute_jaccard_distance

        return compute_jaccard_distance(features, k1=k1, k2=k2, max_distance=max_distance)
    if jaccard == "camera-aware":
        from dsgl_cli.clustering.camera_aware import compute_camera_aware_jaccard, expansion_sizes

        if cameras is None:
            raise DsglError("--jaccard camera-aware needs each image's camera (Market/MSMT file names, camera "
                            "folders, a manifest's camera column or an embeddings file's cameras)", exit_code=2)
        a, b = expansion_sizes(epoch, k2_intra, k2_inter)
        return compute_camera_aware_jaccard(features, np.asarray(cameras), k1_intra, k1_inter, a, b, k2,
                                            max_distance=max_distance)
    raise DsglError(f"--jaccard: unknown distance '{jaccard}'; use kreciprocal or camera-aware", exit_code=2)


def distance_settings(cluster: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`clustering_distance` held by a ``ClusterConfig``."""
    return {key: getattr(cluster, key) for key in ("jaccard", "k1", "k2", "k1_intra", "k1_inter", "k2_intra",
                                                   "k2_inter")}
