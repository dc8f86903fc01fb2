"""Label-free clustering figures against plain loops written from their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from dsgl_cli.clustering.label_free import LabelFreeFigures, label_free_figures


def loop_figures(labels, cameras, features, previous=None) -> dict:
    """Every figure by looping over clusters and pairs, as the module docstring defines it."""
    labels, cameras = list(labels), list(cameras)
    f = np.asarray(features, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    clusters = sorted({y for y in labels if y >= 0})
    multi = [len({cameras[i] for i in range(len(labels)) if labels[i] == c}) > 1 for c in clusters]
    sims = []
    for c in clusters:
        members = [i for i in range(len(labels)) if labels[i] == c]
        pairs = [float(f[i] @ f[j]) for i, j in itertools.permutations(members, 2)]
        if pairs:
            sims.append(sum(pairs) / len(pairs))
    out = {"num_clusters": len(clusters), "num_outliers": sum(y < 0 for y in labels),
           "multi_camera_fraction": sum(multi) / len(multi) if multi else None,
           "mean_intra_similarity": sum(sims) / len(sims) if sims else None,
           "agreement_ari": None, "agreement_nmi": None, "agreement_images": 0}
    if previous is not None:
        both = [i for i in range(len(labels)) if labels[i] >= 0 and previous[i] >= 0]
        out["agreement_images"] = len(both)
        if len(both) >= 2:
            a, b = [labels[i] for i in both], [previous[i] for i in both]
            out["agreement_ari"] = adjusted_rand_score(b, a)
            out["agreement_nmi"] = normalized_mutual_info_score(b, a)
    return out


def _close(got: LabelFreeFigures, want: dict) -> None:
    for key, value in want.items():
        have = getattr(got, key)
        if value is None:
            assert have is None, key
        else:
            assert have == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("seed", range(6))
def test_figures_equal_the_loops_on_random_clusterings(seed: int):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(5, 80)), int(rng.integers(2, 24))
    labels = rng.integers(-1, int(rng.integers(1, 9)), size=n)
    previous = rng.integers(-1, 6, size=n)
    cameras = rng.choice(["door", "hall", "yard"], size=n)
    features = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=(n, 1))     # not unit: rescaled inside
    got = label_free_figures(labels, cameras, features, previous)
    _close(got, loop_figures(labels, cameras, features, previous))
    assert got.num_images == n and got.outlier_fraction == pytest.approx(np.mean(labels < 0))


def test_torch_inputs_unit_features_and_integer_cameras():
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    labels = torch.randint(-1, 4, (30,), generator=gen)
    cams = torch.randint(0, 2, (30,), generator=gen)
    got = label_free_figures(labels, cams, feats)
    _close(got, loop_figures(labels.tolist(), cams.tolist(), feats.numpy()))
    assert got.agreement_ari is None and got.agreement_images == 0


def test_edge_cases_give_none_not_nan():
    feats = np.eye(4)
    all_out = label_free_figures([-1, -1, -1, -1], [0, 1, 0, 1], feats, previous=[0, 0, 1, 1])
    assert (all_out.num_clusters, all_out.multi_camera_fraction, all_out.mean_intra_similarity) == (0, None, None)
    assert all_out.agreement_ari is None and all_out.agreement_images == 0 and all_out.outlier_fraction == 1.0
    singletons = label_free_figures([0, 1, 2, 3], [0, 0, 0, 0], feats)
    assert singletons.mean_intra_similarity is None and singletons.multi_camera_fraction == 0.0


def test_agreement_counts_only_images_clustered_in_both_and_ignores_label_numbers():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    renamed = np.array([5, 5, 3, 3, -1, 7, 4])      # same partition on the first four, then outliers differ
    got = label_free_figures(labels, np.zeros(7), np.ones((7, 2)), previous=renamed)
    assert got.agreement_images == 5
    assert got.agreement_ari == pytest.approx(1.0) and got.agreement_nmi == pytest.approx(1.0)


def test_within_cluster_similarity_is_exact_on_a_known_case():
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = label_free_figures([0, 0, 1, 1, -1], ["a", "b", "a", "a", "b"], feats)
    assert got.mean_intra_similarity == pytest.approx((0.0 + 1.0) / 2)   # orthogonal pair, identical pair
    assert got.multi_camera_fraction == pytest.approx(0.5)


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="one per image"):
        label_free_figures([0, 0, 1], [0, 1], np.ones((3, 2)))
    with pytest.raises(ValueError, match="previous labelling has 2"):
        label_free_figures([0, 0, 1], [0, 1, 1], np.ones((3, 2)), previous=[0, 1])
    with pytest.raises(ValueError, match="integers"):
        label_free_figures([0.5, 0, 1], [0, 1, 1], np.ones((3, 2)))
