"""DBSCAN parity with sklearn and the pseudo-label helpers of method.md 4.3-4.6."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.clustering.memory_init import cluster_centroids, init_memory_bank, irrelevant_labels
from dsgl_cli.errors import DsglError

FIXTURE = Path(
    os.environ.get(
        "DSGL_STEP_FIXTURE",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "dsgl_step_fixture.pt",
    )
)
needs_fixture = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"parity fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


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


def _loop_irrelevant(features, labels, protos, temp, k):
    out = torch.full((len(labels), k), -1, dtype=torch.long)
    for n in range(len(labels)):
        if labels[n] < 0:
            continue
        p = torch.softmax(features[n] @ protos.T / temp, dim=0)
        order = [int(c) for c in torch.argsort(p, descending=True) if int(c) != int(labels[n])]
        out[n] = torch.tensor(order[:k])
    return out


def test_centroids_memory_and_irrelevant_labels_match_loops():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(120, 16, generator=g), dim=1)
    labels = torch.randint(-1, 9, (120,), generator=g)
    labels[:9] = torch.arange(9)
    cents = cluster_centroids(feats, labels)
    for c in range(9):
        torch.testing.assert_close(cents[c], feats[labels == c].mean(0))
    bank = init_memory_bank(cents)
    assert bank.shape == (18, 16)
    torch.testing.assert_close(bank[:9], F.normalize(cents, dim=1))
    torch.testing.assert_close(bank[9:], bank[:9])
    irre = irrelevant_labels(feats, labels, bank[9:], temp=0.05, k=2)
    assert irre.dtype == torch.long and irre.shape == (120, 2)
    torch.testing.assert_close(irre, _loop_irrelevant(feats, labels, bank[9:], 0.05, 2))


def test_irrelevant_labels_with_too_few_clusters():
    feats = F.normalize(torch.randn(4, 8), dim=1)
    labels = torch.tensor([0, 1, 1, -1])
    protos = F.normalize(torch.randn(2, 8), dim=1)
    out = irrelevant_labels(feats, labels, protos)
    assert out.tolist() == [[1, -1], [0, -1], [0, -1], [-1, -1]]


def test_cluster_centroids_rejects_all_outliers():
    with pytest.raises(DsglError):
        cluster_centroids(torch.zeros(3, 4), np.array([-1, -1, -1]))


@needs_fixture
def test_parity_cluster_centroids_and_memory_bank(fixture):
    cents = cluster_centroids(fixture["features"], fixture["pseudo_labels"])
    assert cents.shape[0] == fixture["num_cluster"]
    torch.testing.assert_close(cents, fixture["cluster_features"], rtol=1e-5, atol=1e-6)
    bank = init_memory_bank(cents)
    torch.testing.assert_close(bank, fixture["memory_init"], rtol=1e-5, atol=1e-6)


@needs_fixture
def test_parity_irrelevant_labels(fixture):
    c = fixture["num_cluster"]
    got = irrelevant_labels(
        fixture["features"], fixture["pseudo_labels"], fixture["memory_init"][c:],
        temp=fixture["temp"], k=fixture["k_irre"],
    )
    assert torch.equal(got, fixture["id_irre_labels"])

