"""DBSCAN on the sparse Jaccard distance against scikit-learn's on the dense matrix (method.md 4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.errors import DsglError


def _random_distances(n: int, seed: int) -> np.ndarray:
    """Distances in [0, 1) from 2-D blobs: many border points and cluster collisions."""
    rng = np.random.default_rng(seed)
    centres = rng.random((max(2, n // 15), 2)) * 3
    pts = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.15, (n, 2))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    return np.minimum(d / 2.0, 0.999)


@pytest.mark.parametrize("seed", range(6))
def test_dbscan_matches_sklearn_dense_and_sparse(seed):
    d = _random_distances(150, seed)
    max_distance = 0.5
    rows, cols = np.nonzero(d <= max_distance)
    sparse = sp.csr_matrix((d[rows, cols].astype(np.float32), (rows, cols)), shape=d.shape)
    sparse.max_distance = max_distance
    assert sparse.nnz == rows.size  # stored zeros (the diagonal) kept
    n_border_cases = 0
    for eps in (0.05, 0.08, 0.12, 0.2, 0.35):
        for min_samples in (1, 3, 4, 8):
            expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)
            np.testing.assert_array_equal(dbscan(d, eps, min_samples), expected)
            np.testing.assert_array_equal(dbscan(sparse, eps, min_samples), expected)
            n_border_cases += int((expected >= 0).sum())
    assert n_border_cases > 0


def test_dbscan_sparse_without_diagonal_counts_self():
    d = np.array([[0, 0.1, 0.9], [0.1, 0, 0.9], [0.9, 0.9, 0]])
    sparse = sp.csr_matrix(np.where(d < 0.5, d, 0))  # zeros (the diagonal) dropped by scipy
    np.testing.assert_array_equal(dbscan(sparse, 0.2, 2), [0, 0, -1])


def test_dbscan_rejects_bad_eps():
    d = _random_distances(20, 0)
    sparse = sp.csr_matrix(d)
    sparse.max_distance = 0.5
    with pytest.raises(DsglError) as err:
        dbscan(sparse, 0.6)
    assert "max_distance" in str(err.value)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DsglError) as err:
            dbscan(d, bad)
        assert err.value.exit_code == 2
    with pytest.raises(DsglError):
        dbscan(d, 0.3, max_distance=0.2)
