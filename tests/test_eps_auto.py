"""--eps auto: the silhouette against scikit-learn's, and the rule's pick on features of known structure."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import silhouette_samples

from dsgl_cli.clustering.camera_aware import compute_camera_aware_jaccard
from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.clustering.eps_auto import choose_eps, silhouette_with_outliers
from dsgl_cli.clustering.jaccard import compute_jaccard_distance
from dsgl_cli.clustering.quality import label_quality
from dsgl_cli.errors import DsglError
from tests.reference_ca_jaccard import camera_biased_features
from tests.reference_jaccard import clustered_unit_features


def _plain_silhouette(dense: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's silhouette over the clustered images, 0 for outliers, averaged over all images."""
    inside = labels >= 0
    values = np.zeros(labels.size)
    values[inside] = silhouette_samples(dense[np.ix_(inside, inside)], labels[inside], metric="precomputed")
    return float(values.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_silhouette_matches_sklearn_on_the_dense_matrix(seed):
    rng = np.random.default_rng(seed)
    n = 60
    dense = rng.uniform(0.05, 1.0, (n, n))
    dense = np.minimum(dense, dense.T)
    dense[dense > 0.8] = 1.0           # absent from the sparse form
    dense[3, 7] = dense[7, 3] = 0.0     # a stored zero off the diagonal is a real distance
    np.fill_diagonal(dense, 0.0)
    stored = dense < 1.0
    sparse = sp.csr_matrix((dense[stored], np.nonzero(stored)), shape=(n, n))
    labels = rng.integers(-1, 5, n)
    labels[labels == 4] = -1
    labels[0] = 4                       # a single-image cluster: 0, as sklearn
    assert silhouette_with_outliers(sparse, labels) == pytest.approx(_plain_silhouette(dense, labels), abs=1e-12)


def test_fewer_than_two_clusters_scores_minus_one():
    d = sp.csr_matrix(np.eye(5))
    assert silhouette_with_outliers(d, np.array([0, 0, 0, -1, -1])) == -1.0


def _sweep_ari(distance, ids, grid):
    return {e: label_quality(dbscan(distance, e), ids).ari for e in grid}


@pytest.mark.parametrize("kind", ["kreciprocal", "camera-aware"])
def test_auto_eps_is_within_003_ari_of_the_best_labelled_eps(kind):
    """Features of known identities: the rule, blind to them, lands within 0.03 ARI of the best eps."""
    if kind == "kreciprocal":
        x = clustered_unit_features(600, 32, 40, noise=1.3, seed=4)
        ids = np.argmax(x @ _centres(x, 40, 4).T, axis=1)
        distance = compute_jaccard_distance(x, k1=20, k2=6)
    else:
        x, cams, ids = camera_biased_features([150, 120, 90, 60], 40, 32, seed=5, bias=0.9, noise=0.7)
        distance = compute_camera_aware_jaccard(x, cams)
    grid = [round(0.2 + 0.01 * i, 2) for i in range(71)]
    ari = _sweep_ari(distance, ids, grid)
    best = max(ari.values())
    choice = choose_eps(distance, lambda e: dbscan(distance, e))
    got = label_quality(choice.labels, ids).ari
    assert best - got <= 0.03, (choice.eps, got, best)
    assert best - min(ari[0.2], ari[0.9]) > 0.2   # eps matters here: a fixed guess at either end fails


def _centres(x, num, seed):
    """The generator's centres of clustered_unit_features (the same draws), for the true ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num, x.shape[1]))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def test_no_eps_with_two_clusters_is_a_one_line_error():
    distance = sp.csr_matrix(np.eye(6, dtype=np.float32))
    with pytest.raises(DsglError, match="--eps auto: no eps between 0.2 and 0.9 gives two clusters"):
        choose_eps(distance, lambda e: np.full(6, -1))
