"""compute_jaccard_distance and knn_search against a plain dense implementation of method.md 4.2."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.clustering.jaccard import compute_jaccard_distance
from dsgl_cli.clustering.kreciprocal import half_k, reciprocal_sets
from dsgl_cli.clustering.neighbours import _torch_topk, knn_search
from dsgl_cli.errors import DsglError
from tests.reference_jaccard import clustered_unit_features, k_reciprocal, reference_jaccard, reference_ranking

MAX_D = 0.95
CASES = [(50, 5, 1), (50, 20, 6), (200, 20, 6), (200, 5, 6), (200, 30, 1), (500, 30, 6)]
_cache: dict = {}


def _case(n: int, k1: int, k2: int):
    key = (n, k1, k2)
    if key not in _cache:
        x = clustered_unit_features(n, 32, max(2, n // 20), noise=1.0, seed=n + 7 * k1 + k2)
        _cache[key] = (x, reference_jaccard(x, k1, k2), compute_jaccard_distance(x, k1, k2, MAX_D))
    return _cache[key]


@pytest.mark.parametrize("n,k1,k2", CASES)
def test_jaccard_matches_dense_reference(n, k1, k2):
    x, ref, jac = _case(n, k1, k2)
    assert isinstance(jac, sp.csr_matrix) and jac.shape == (n, n) and jac.dtype == np.float32
    coo = jac.tocoo()
    # every stored pair agrees with the reference
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-5, rtol=0)
    # every pair left out is farther than max_distance in the reference
    stored = np.zeros((n, n), dtype=bool)
    stored[coo.row, coo.col] = True
    assert np.all(ref[~stored] > MAX_D)
    assert np.all(coo.data <= MAX_D)
    # no duplicates, symmetric, diagonal stored as explicit zeros
    assert coo.nnz == stored.sum()
    assert (abs(jac - jac.T) > 0).nnz == 0
    diag = coo.row == coo.col
    assert diag.sum() == n and np.all(coo.data[diag] == 0.0)
    assert jac.max_distance == MAX_D
    # the matrix is not trivially dense or trivially empty
    assert n < coo.nnz < n * n


def test_the_search_width_matters_so_the_reference_comparison_has_teeth():
    """With Zhong et al.'s k1 + 1 lists (dsgl's old search) the distances differ from the reference's k1."""
    x, ref, jac = _case(200, 20, 6)
    zhong = reference_jaccard(x, 20, 6, width=21)
    assert np.abs(zhong - ref).max() > 0.01
    coo = jac.tocoo()
    assert np.abs(coo.data - zhong[coo.row, coo.col]).max() > 0.01


@pytest.mark.parametrize("n,k1,k2", CASES)
def test_dbscan_on_sparse_matches_sklearn_on_dense_reference(n, k1, k2):
    _, ref, jac = _case(n, k1, k2)
    coo = jac.tocoo()
    dense = np.ones((n, n))  # absent pairs are farther than any eps
    dense[coo.row, coo.col] = coo.data  # stored zeros included
    most = 0
    # eps off "round" values: with few neighbours, distances like exactly 0.5 occur, and float32
    # vs float64 rounding would decide such ties differently from the reference
    for eps in (0.33, 0.47, 0.61, 0.72):
        for min_samples in (2, 4):
            got = dbscan(jac, eps, min_samples=min_samples)
            expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(ref)
            np.testing.assert_array_equal(got, expected)
            same_matrix = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
            np.testing.assert_array_equal(got, same_matrix)
            most = max(most, got.max() + 1)
    assert most >= 2  # several clusters somewhere: the comparison above has teeth


def test_torch_input_and_custom_search_agree_with_numpy():
    x, _, jac = _case(200, 20, 6)
    calls = []

    def search(features, k):
        calls.append(k)
        return knn_search(features, k)

    jac_t = compute_jaccard_distance(torch.from_numpy(x), 20, 6, MAX_D, search=search)
    assert calls == [20]   # k1 neighbours, self included, as the reference's search
    assert (abs(jac_t - jac) > 1e-6).nnz == 0 and jac_t.nnz == jac.nnz


def test_approximate_search_gives_a_valid_distance():
    x = clustered_unit_features(400, 16, 20, noise=1.0, seed=3)
    jac = compute_jaccard_distance(x, 20, 6, search=lambda f, k: knn_search(f, k, exact=False, nlist=8, nprobe=8))
    exact = compute_jaccard_distance(x, 20, 6)
    # probing every list makes IVF exact
    assert jac.nnz == exact.nnz and abs(jac - exact).max() < 1e-5


def test_small_n_and_bad_arguments():
    x = clustered_unit_features(8, 8, 2, noise=0.5, seed=1)
    jac = compute_jaccard_distance(x, k1=8, k2=6)  # every image its neighbour: the largest k1 there is
    assert jac.shape == (8, 8) and np.all(jac.diagonal() == 0)
    with pytest.raises(DsglError, match="--k1 30 asks for more neighbours than the 8 images") as err:
        compute_jaccard_distance(x, k1=30, k2=6)
    assert err.value.exit_code == 2
    with pytest.raises(DsglError):
        compute_jaccard_distance(x, k1=0)
    with pytest.raises(DsglError):
        compute_jaccard_distance(x, max_distance=1.5)


def test_half_k_uses_bankers_rounding():
    assert [half_k(k) for k in (5, 7, 20, 30, 1, 3)] == [2, 4, 10, 15, 0, 2]


def test_reciprocal_sets_match_loop_definition():
    x = clustered_unit_features(120, 16, 6, noise=1.0, seed=5)
    rank = reference_ranking(x)
    _, idx = knn_search(x, 21)
    for k in (5, 10, 20):
        rec = reciprocal_sets(idx, k)
        for i in range(0, 120, 7):
            assert sorted(rec.indices[rec.indptr[i]:rec.indptr[i + 1]]) == sorted(k_reciprocal(rank, i, k))


def test_knn_search_self_first_even_with_duplicates():
    x = clustered_unit_features(300, 16, 10, noise=1.0, seed=2)
    x[10] = x[11] = x[12] = x[40]  # four identical rows tie with each other
    dist, idx = knn_search(x, 8)
    assert idx.shape == (300, 8) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    for i in (10, 11, 12, 40):
        assert set(idx[i, :4]) == {10, 11, 12, 40}
    # the rest agrees with a dense ranking (no ties among the others)
    # the rest agrees with a dense ranking, up to the order inside the tied group
    ref = reference_ranking(x)[:, :8]
    canon = np.arange(300)
    canon[[11, 12, 40]] = 10
    ok = np.ones(300, dtype=bool)
    ok[[10, 11, 12, 40]] = False
    np.testing.assert_array_equal(canon[idx[ok]], canon[ref[ok]])
    sims = (x.astype(np.float64) @ x.T.astype(np.float64))[np.arange(300)[:, None], idx]
    np.testing.assert_allclose(dist, sims, atol=1e-5)


def test_torch_topk_path_matches_faiss():
    x = clustered_unit_features(500, 16, 10, noise=1.0, seed=4)
    d_f, i_f = knn_search(x, 10)
    d_t, i_t = _torch_topk(torch.from_numpy(x), 10, chunk=128)
    np.testing.assert_array_equal(i_t, i_f)
    np.testing.assert_allclose(d_t, d_f, atol=1e-5)


def test_tiny_row_chunks_split_and_still_match(monkeypatch):
    import dsgl_cli.clustering.jaccard as jaccard

    monkeypatch.setattr(jaccard, "_CHUNK_CELLS", 500)  # forces one-row chunks
    monkeypatch.setattr(jaccard, "_CHUNK_CONTRIB", 5000)
    x, ref, jac = _case(200, 20, 6)
    small = jaccard.compute_jaccard_distance(x, 20, 6, MAX_D)
    assert small.nnz == jac.nnz and abs(small - jac).max() < 1e-6


def _host_and_device_joins(x, k1, k2, device):
    """(host min-join, the torch min-join on `device`) of one encoding: rows, partners, s."""
    import dsgl_cli.clustering.jaccard as jaccard

    sims, idx = jaccard.neighbour_lists(x, k1)
    v = jaccard.encode_neighbourhoods(x, sims, idx, k1, k2)
    v.sort_indices()
    cols = jaccard._ColumnIndex(v)
    s_min = jaccard._min_similarity(MAX_D)
    return jaccard._min_join_host(v, cols, s_min), jaccard._min_join_on(v, cols, s_min, torch.device(device))


@pytest.mark.parametrize("cells,contrib", [(1 << 25, 1 << 24), (300, 3000)])
def test_torch_min_join_equals_the_host_one(monkeypatch, cells, contrib):
    import dsgl_cli.clustering.jaccard as jaccard

    monkeypatch.setattr(jaccard, "_DEVICE_CHUNK_CELLS", cells)     # (300, 3000): many one-row chunks
    monkeypatch.setattr(jaccard, "_DEVICE_CHUNK_CONTRIB", contrib)
    x = clustered_unit_features(300, 32, 15, noise=1.0, seed=11)
    host, dev = _host_and_device_joins(x, 20, 6, "cpu")
    assert host[0].size > 1000
    np.testing.assert_array_equal(dev[0], host[0])                # same pairs, same order
    np.testing.assert_array_equal(dev[1], host[1])
    np.testing.assert_allclose(dev[2], host[2], rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_give_the_host_distance():
    x, ref, jac = _case(500, 30, 6)
    jac_cuda = compute_jaccard_distance(torch.from_numpy(x).cuda(), 30, 6, MAX_D)
    assert jac_cuda.nnz == jac.nnz and abs(jac_cuda - jac).max() < 1e-6
    coo = jac_cuda.tocoo()
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-5, rtol=0)


def test_a_full_gpu_falls_back_to_the_host_join(monkeypatch):
    import dsgl_cli.clustering.jaccard as jaccard

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(jaccard, "_min_join_on", out_of_memory)
    x, _, jac = _case(200, 20, 6)
    sims, idx = jaccard.neighbour_lists(x, 20)
    v = jaccard.encode_neighbourhoods(x, sims, idx, 20, 6)
    again = jaccard.jaccard_from_encoding(v, MAX_D, device=torch.device("cuda"))
    assert again.nnz == jac.nnz and abs(again - jac).max() == 0
