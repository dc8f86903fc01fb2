"""DBSCAN on the sparse Jaccard distance, identical to scikit-learn's on the dense matrix (method.md 4.3)."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from dsgl_cli.clustering.jaccard import MAX_DISTANCE_ATTR
from dsgl_cli.errors import DsglError


def dbscan(
    distance: Union[sp.spmatrix, np.ndarray],
    eps: float,
    min_samples: int = 4,
    max_distance: Optional[float] = None,
) -> np.ndarray:
    """DBSCAN labels (-1 = outlier) identical to sklearn's ``DBSCAN(metric='precomputed')`` (4.3).

    ``distance`` is dense or sparse; in a sparse matrix an absent pair counts as farther than eps,
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
    n = distance.shape[0]
    limit = max_distance if max_distance is not None else getattr(distance, MAX_DISTANCE_ATTR, None)
    if limit is not None and eps > limit:
        raise DsglError(
            f"eps {eps} exceeds the max_distance {limit} the Jaccard matrix was built with; "
            f"rebuild it with max_distance >= eps"
        )
    if sp.issparse(distance):
        m = sp.csr_matrix(distance)
        rows = np.repeat(np.arange(n), np.diff(m.indptr))
        keep = m.data <= eps
        r, c = rows[keep], m.indices[keep]
        # like sklearn, an absent diagonal entry counts as distance 0 (a point is its own neighbour)
        off = r != c
        own = np.flatnonzero(m.diagonal() <= eps)
        r, c = np.concatenate([r[off], own]), np.concatenate([c[off], own])
    else:
        d = np.asarray(distance)
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
