"""Memory initialisation (method.md 4.5-4.6) against loops and the authors' fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsgl_cli.clustering.memory_init import cluster_centroids, init_memory_bank, irrelevant_labels
from dsgl_cli.errors import DsglError


@pytest.fixture(scope="module")
def fixture(step_fixture: dict) -> dict:
    return step_fixture


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


def test_parity_cluster_centroids_and_memory_bank(fixture):
    cents = cluster_centroids(fixture["features"], fixture["pseudo_labels"])
    assert cents.shape[0] == fixture["num_cluster"]
    torch.testing.assert_close(cents, fixture["cluster_features"], rtol=1e-5, atol=1e-6)
    bank = init_memory_bank(cents)
    torch.testing.assert_close(bank, fixture["memory_init"], rtol=1e-5, atol=1e-6)


def test_parity_irrelevant_labels(fixture):
    c = fixture["num_cluster"]
    got = irrelevant_labels(
        fixture["features"], fixture["pseudo_labels"], fixture["memory_init"][c:],
        temp=fixture["temp"], k=fixture["k_irre"],
    )
    assert torch.equal(got, fixture["id_irre_labels"])
