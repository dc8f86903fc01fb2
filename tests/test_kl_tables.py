"""The L_kl table recurrence on coefficients (kl_tables.py) against the plain row-by-row loop of method.md 5.3."""

from __future__ import annotations

import numpy as np
import pytest

from dsgl_cli.method.kl_tables import kl_coefficients, kl_events


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def _random_batch(seed: int, C: int = 9, d: int = 5, K: int = 2, B: int = 12, G: int = 7) -> dict:
    """Anchors of 3 clusters, m+ vectors per (cluster, order), negative groups of other clusters."""
    rng = np.random.default_rng(seed)
    P = np.stack([_normalize(v) for v in rng.normal(size=(C, d))])
    clusters = rng.choice(C, size=3, replace=False)
    P[clusters[0]] *= 1.0 + 1e-3                          # a start row that is not exactly unit
    targets = rng.choice(clusters, size=B)
    # pair vectors: two per batch cluster; anchor i uses one of its own cluster's for each order
    pair_cluster = np.repeat(clusters, 2)
    which = np.array([np.flatnonzero(clusters == t)[0] for t in targets])
    pair_of = 2 * which[:, None] + rng.integers(0, 2, size=(B, K))
    neg_cluster = rng.choice(C, size=G)
    neg_mask = rng.random((K, B, G)) < 0.35
    neg_mask &= neg_cluster[None, None, :] != targets[None, :, None]
    vec_cluster = np.concatenate([pair_cluster, neg_cluster])
    V = rng.normal(size=(vec_cluster.size, d)) * 0.5
    return {"P": P, "targets": targets, "pair_of": pair_of, "neg_mask": neg_mask, "vec_cluster": vec_cluster,
            "V": V, "n_pairs": pair_cluster.size}


def _loop_tables(b: dict, tau_re: float, tau1_re: float) -> list[np.ndarray]:
    """method.md 5.3 literally: per order, anchors in batch order read and write one table D."""
    tables = []
    for k in range(b["pair_of"].shape[1]):
        D = b["P"].copy()
        for i, t in enumerate(b["targets"]):
            D[t] = _normalize((1 - tau_re) * D[t] + tau_re * b["V"][b["pair_of"][i, k]])
            for g in np.flatnonzero(b["neg_mask"][k, i]):
                c = b["vec_cluster"][b["n_pairs"] + g]
                D[c] = _normalize((1 - tau1_re) * D[c] + tau1_re * b["V"][b["n_pairs"] + g])
        tables.append(D)
    return tables


@pytest.mark.parametrize("seed", range(6))
def test_kl_coefficients_equal_the_row_loop(seed: int) -> None:
    b = _random_batch(seed)
    tau_re, tau1_re = 0.8, 0.1
    ev = kl_events(b["targets"], b["pair_of"], b["neg_mask"], b["vec_cluster"], tau_re, tau1_re)
    V, P = b["V"], b["P"]
    own_dot = np.einsum("jd,jd->j", P[b["vec_cluster"]], V)
    c0, cv = kl_coefficients(ev, V @ V.T, own_dot, np.einsum("ud,ud->u", P[ev.rows], P[ev.rows]))
    for k, D in enumerate(_loop_tables(b, tau_re, tau1_re)):
        ours = P.copy()
        ours[ev.rows] = c0[k][:, None] * P[ev.rows] + cv[k] @ V
        np.testing.assert_allclose(ours, D, rtol=1e-10, atol=1e-12)


def test_rows_without_events_in_an_order_stay_at_their_start() -> None:
    """A row touched only by order 1 keeps c0 = 1, cv = 0 for order 0, even if |P[r]| != 1."""
    b = _random_batch(3)
    b["neg_mask"][0] = False
    b["neg_mask"][1, 0, :] = b["vec_cluster"][b["n_pairs"]:] != b["targets"][0]
    ev = kl_events(b["targets"], b["pair_of"], b["neg_mask"], b["vec_cluster"], 0.8, 0.1)
    only_negative = np.setdiff1d(ev.rows, b["targets"])
    assert only_negative.size
    V, P = b["V"], b["P"]
    own_dot = np.einsum("jd,jd->j", P[b["vec_cluster"]], V)
    c0, cv = kl_coefficients(ev, V @ V.T, own_dot, np.ones(ev.rows.size))
    at = np.searchsorted(ev.rows, only_negative)
    np.testing.assert_array_equal(c0[0, at], 1.0)
    np.testing.assert_array_equal(cv[0, at], 0.0)


def test_own_pairs_are_the_same_cluster_pairs() -> None:
    b = _random_batch(1)
    ev = kl_events(b["targets"], b["pair_of"], b["neg_mask"], b["vec_cluster"], 0.8, 0.1)
    i, j = ev.own_pairs()
    touched = np.isin(b["vec_cluster"], ev.rows)
    want = {(a, c) for a in range(b["vec_cluster"].size) for c in range(a + 1, b["vec_cluster"].size)
            if touched[a] and b["vec_cluster"][a] == b["vec_cluster"][c]}
    assert set(zip(i.tolist(), j.tolist())) == want
    assert ev.rows_other_than(np.unique(b["targets"])).tolist() == np.setdiff1d(ev.rows, b["targets"]).tolist()
