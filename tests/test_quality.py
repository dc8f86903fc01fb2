"""label_quality on hand-computed cases and against an O(N^2) pair count."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from dsgl_cli.clustering.quality import label_quality, singletonize


def test_hand_computed_case():
    # pseudo: {0,1,2} {3,4} and outlier 5; true: a={0,1,5}, b={2,3,4}
    q = label_quality(np.array([0, 0, 0, 1, 1, -1]), np.array([7, 7, 9, 9, 9, 7]))
    # predicted pairs: 3 + 1 = 4; true pairs: 3 + 3 = 6; shared: (0,1) and (3,4)
    assert q.precision == pytest.approx(0.5)
    assert q.recall == pytest.approx(1 / 3)
    assert q.f_score == pytest.approx(0.4)
    assert (q.num_images, q.num_clusters, q.num_outliers) == (6, 2, 1)
    assert q.size_histogram == {"1": 0, "2-3": 2, "4-7": 0, "8-15": 0, "16-31": 0, "32+": 0}
    d = q.to_dict()
    assert set(d) >= {"precision", "recall", "f_score", "ari", "nmi", "num_clusters", "num_outliers", "size_histogram"}


def test_perfect_and_all_outliers():
    t = np.array([3, 3, 5, 5, 5, 8])
    q = label_quality(np.array([1, 1, 0, 0, 0, 2]), t)
    assert (q.precision, q.recall, q.f_score, q.ari, q.nmi) == pytest.approx((1, 1, 1, 1, 1))
    q = label_quality(np.array([-1] * 6), t)
    assert (q.precision, q.recall, q.f_score) == (0.0, 0.0, 0.0)
    assert q.num_clusters == 0 and q.num_outliers == 6


def test_histogram_bins():
    y = np.concatenate([np.full(1, 0), np.full(3, 1), np.full(4, 2), np.full(15, 3), np.full(16, 4), np.full(40, 5)])
    q = label_quality(y, np.zeros_like(y))
    assert q.size_histogram == {"1": 1, "2-3": 1, "4-7": 1, "8-15": 1, "16-31": 1, "32+": 1}


@pytest.mark.parametrize("seed", range(4))
def test_against_pair_loops_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(-1, 8, 120)
    t = rng.integers(0, 10, 120)
    tp = pp = tt = 0
    for i, j in combinations(range(120), 2):
        same_pred = y[i] >= 0 and y[i] == y[j]
        same_true = t[i] == t[j]
        pp += same_pred
        tt += same_true
        tp += same_pred and same_true
    q = label_quality(y, t)
    assert q.precision == pytest.approx(tp / pp)
    assert q.recall == pytest.approx(tp / tt)
    single = singletonize(y)
    assert q.ari == pytest.approx(adjusted_rand_score(t, single))
    assert q.nmi == pytest.approx(normalized_mutual_info_score(t, single))
    assert q.num_outliers == int((y < 0).sum())
