"""evaluate_rank against a plain per-query loop built on sklearn (method.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dsgl_cli.evaluation.metrics as metrics
from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation.metrics import RankResult, evaluate_rank
from tests.reference_metrics import loop_evaluate


def assert_same(result: RankResult, expected, tol=1e-6):
    m_ap, cmc, m_inp, n = expected
    assert result.num_valid_queries == n
    assert abs(result.mAP - m_ap) < tol
    assert result.cmc.shape == cmc.shape
    np.testing.assert_allclose(result.cmc, cmc, atol=tol, rtol=0)
    assert abs(result.mINP - m_inp) < tol


def random_ids(rng, q, g, num_ids=12, num_cams=3):
    qp = rng.integers(1, num_ids, q)
    gp = rng.integers(0, num_ids, g)  # pid 0 plays the distractor: never a query id
    qc = rng.integers(0, num_cams, q)
    gc = rng.integers(0, num_cams, g)
    return qp, gp, qc, gc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_random_matrices_match_sklearn_loop(seed, dtype):
    rng = np.random.default_rng(seed)
    q, g = int(rng.integers(5, 80)), int(rng.integers(20, 400))
    qp, gp, qc, gc = random_ids(rng, q, g)
    dist = rng.random((q, g)).astype(dtype)
    assert_same(evaluate_rank(dist, qp, gp, qc, gc, max_rank=30), loop_evaluate(dist, qp, gp, qc, gc, 30))


@pytest.mark.parametrize("levels", [2, 3, 7])
@pytest.mark.parametrize("seed", range(3))
def test_tied_integer_matrices_match_sklearn_loop(seed, levels):
    rng = np.random.default_rng(100 + seed)
    q, g = 40, 150
    qp, gp, qc, gc = random_ids(rng, q, g, num_ids=8)
    dist = rng.integers(0, levels, (q, g)).astype(np.float32)
    assert_same(evaluate_rank(dist, qp, gp, qc, gc, max_rank=20), loop_evaluate(dist, qp, gp, qc, gc, 20))
    # integer dtype input is accepted too (evaluated exactly in float64)
    as_int = evaluate_rank(dist.astype(np.int64), qp, gp, qc, gc, max_rank=20)
    assert_same(as_int, loop_evaluate(dist, qp, gp, qc, gc, 20))


def test_distractors_junk_and_queries_without_match():
    rng = np.random.default_rng(7)
    q, g = 30, 200
    qp, gp, qc, gc = random_ids(rng, q, g, num_ids=10)
    gp[rng.random(g) < 0.3] = 0  # many distractors
    gp[rng.random(g) < 0.1] = -1  # junk id
    qp[:3] = 99  # ids absent from the gallery: skipped
    qp[3], qc[3] = 98, 0  # only same-camera copies in the gallery: skipped
    gp[:4], gc[:4] = 98, 0
    dist = np.round(rng.random((q, g)), 1)  # ties as well
    expected = loop_evaluate(dist, qp, gp, qc, gc, 50)
    assert expected[3] <= q - 4
    assert_same(evaluate_rank(dist, qp, gp, qc, gc), expected)


def test_torch_inputs_equal_numpy_inputs():
    rng = np.random.default_rng(3)
    qp, gp, qc, gc = random_ids(rng, 25, 120)
    dist = rng.integers(0, 5, (25, 120)).astype(np.float32)
    expected = loop_evaluate(dist, qp, gp, qc, gc, 50)
    as_t = [torch.from_numpy(x) for x in (dist, qp, gp, qc, gc)]
    assert_same(evaluate_rank(*as_t), expected)
    # non-contiguous tensor (a transposed view) is fine too
    assert_same(evaluate_rank(torch.from_numpy(dist.T.copy()).T, *as_t[1:]), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_match_loop():
    rng = np.random.default_rng(4)
    qp, gp, qc, gc = random_ids(rng, 60, 300)
    dist = rng.integers(0, 6, (60, 300)).astype(np.float32)
    dev = torch.device("cuda")
    res = evaluate_rank(*(torch.from_numpy(x).to(dev) for x in (dist, qp, gp, qc, gc)))
    assert_same(res, loop_evaluate(dist, qp, gp, qc, gc, 50))


def test_torch_sort_path_used_on_gpu_gives_the_same_numbers(monkeypatch):
    # On CUDA the rows are sorted with torch.sort instead of np.sort; run that path on the CPU.
    monkeypatch.setattr(metrics, "_sort_rows", lambda block: torch.sort(block, dim=1).values)
    rng = np.random.default_rng(9)
    qp, gp, qc, gc = random_ids(rng, 30, 140)
    dist = rng.integers(0, 4, (30, 140)).astype(np.float32)
    expected = loop_evaluate(dist, qp, gp, qc, gc, 50)
    assert_same(evaluate_rank(torch.from_numpy(dist), qp, gp, qc, gc), expected)


def test_many_chunks_and_threads(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 500)  # 2-row chunks, tie helper in pieces
    rng = np.random.default_rng(11)
    qp, gp, qc, gc = random_ids(rng, 33, 250, num_ids=6)
    dist = rng.integers(0, 4, (33, 250)).astype(np.float64)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_same(evaluate_rank(dist, qp, gp, qc, gc), loop_evaluate(dist, qp, gp, qc, gc, 50))
    finally:
        torch.set_num_threads(torch_threads)


def test_hand_computed_single_query():
    # gallery:        junk  miss  hit   miss  hit   miss
    dist = np.array([[0.05, 0.1, 0.2, 0.3, 0.4, 0.5]])
    gp = np.array([1, 2, 1, 3, 1, 4])
    gc = np.array([0, 1, 1, 1, 2, 1])
    res = evaluate_rank(dist, np.array([1]), gp, np.array([0]), gc, max_rank=6)
    # ranked list after dropping the junk: miss, hit, miss, hit, miss
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1, 1, 1])
    assert res.mINP == pytest.approx(2 / 4)
    assert res.num_valid_queries == 1


def test_hand_computed_ties():
    # three items tied at distance 1, the match is the last of them: sklearn sees one
    # threshold with precision 1/3; stable order puts the match at rank 3.
    dist = np.array([[1.0, 1.0, 1.0, 2.0]])
    gp = np.array([5, 6, 1, 7])
    res = evaluate_rank(dist, np.array([1]), gp, np.array([0]), np.array([1, 1, 1, 1]), max_rank=4)
    assert res.mAP == pytest.approx(1 / 3)
    np.testing.assert_allclose(res.cmc, [0, 0, 1, 1])
    assert res.mINP == pytest.approx(1 / 3)


def test_two_queries_mean_and_to_dict():
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    gp = np.array([1, 2, 2])
    gc = np.array([1, 1, 1])
    res = evaluate_rank(dist, np.array([1, 2]), gp, np.array([0, 0]), gc, max_rank=10)
    # query 0: hit at rank 1 -> AP 1, mINP 1; query 1: hits at ranks 1, 2 -> AP 1, mINP 1
    assert res.to_dict() == {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "mINP": 1.0}
    dist2 = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    res2 = evaluate_rank(dist2, np.array([1, 2]), gp, np.array([0, 0]), gc, max_rank=3)
    # query 0: hit at rank 3 -> AP 1/3, mINP 1/3; query 1: hits at ranks 2, 3 -> AP (1/2 + 2/3)/2, mINP 2/3
    assert res2.mAP == pytest.approx((1 / 3 + (1 / 2 + 2 / 3) / 2) / 2)
    np.testing.assert_allclose(res2.cmc, [0, 0.5, 1.0])
    assert res2.mINP == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert set(res2.to_dict()) == {"mAP", "rank1", "mINP"}  # ranks beyond max_rank are left out


def test_gallery_shorter_than_max_rank():
    rng = np.random.default_rng(5)
    qp, gp, qc, gc = random_ids(rng, 10, 6, num_ids=3)
    dist = rng.random((10, 6))
    res = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50)
    assert res.cmc.shape == (50,)
    assert np.all(res.cmc[5:] == 1.0)
    assert_same(res, loop_evaluate(dist, qp, gp, qc, gc, 50))


def test_infinite_distances_are_ranked_last():
    rng = np.random.default_rng(8)
    qp, gp, qc, gc = random_ids(rng, 20, 60, num_ids=5)
    dist = rng.random((20, 60))
    dist[rng.random((20, 60)) < 0.3] = np.inf
    # sklearn refuses inf, so the reference sees a huge finite stand-in (same order, same ties)
    expected = loop_evaluate(np.where(np.isinf(dist), 1e300, dist), qp, gp, qc, gc, 50)
    assert_same(evaluate_rank(dist, qp, gp, qc, gc), expected)


def test_user_errors_are_one_line():
    dist = np.zeros((2, 3))
    ids_q, ids_g = np.array([1, 2]), np.array([1, 2, 3])
    with pytest.raises(DsglError, match="query_pids has 3 entries"):
        evaluate_rank(dist, ids_g, ids_g, ids_q, ids_g)
    bad = dist.copy()
    bad[0, 1] = np.nan
    with pytest.raises(DsglError, match="NaN"):
        evaluate_rank(bad, ids_q, ids_g, ids_q, np.array([9, 9, 9]))
    with pytest.raises(DsglError, match="no query has a true match"):
        evaluate_rank(dist, np.array([7, 8]), ids_g, ids_q, ids_g)
    with pytest.raises(DsglError, match="2-D"):
        evaluate_rank(np.zeros(3), ids_q, ids_g, ids_q, ids_g)
