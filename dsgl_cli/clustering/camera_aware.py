"""Camera-aware Jaccard distance (CA-Jaccard, Chen et al., CVPR 2024) in the sparse engine.

Exactly the reference code's clustering distance (`caj_rerank.py` with ``--ckrnns --clqe``), as
specified in docs/ca-jaccard.md, steps 1-15:

* rank lists per query by ``D = 2 - 2 f_i.f_j``: an *intra* list (same camera first, self at 0, then
  the other cameras if the own camera is too small) and an *inter* list (other cameras first, then
  the own camera, self included, if the others are too few): the lexicographic (penalty, D) order;
* k-reciprocal sets on each list kind separately, with the reference's ``k + 1`` forward lists
  (6 intra entries for k1_intra = 5, self included; 21 inter entries for k1_inter = 20), united;
* V = softmax(-D) over that union; each row replaced by the mean of V over its first k2_intra intra
  and first k2_inter inter entries (a duplicate counts twice); no expansion when ``k2 == 1``;
* the weighted Jaccard distance 1 - s/(2 - s), s = sum min(V'_i, V'_j), by the sparse min-join of
  `jaccard.py`.

The reference holds dense N x N float32 matrices (4.3 GB each at MSMT17 size). Here only the list
prefixes are kept (N x (k1_inter + 2) ids), found by chunked matrix products with two top-k per
chunk, so the search costs one N^2 d product, as the plain Jaccard's; the rest is sparse.

The warm-up rule of the reference (3/3 expansion at epoch 0) belongs to training and is applied by
:func:`expansion_sizes`; this module's distance uses the sizes it is given.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from dsgl_cli.clustering.jaccard import _pair_similarities, jaccard_from_encoding
from dsgl_cli.clustering.kreciprocal import encode, reciprocal_sets, support_pairs
from dsgl_cli.errors import DsglError

Features = Union[torch.Tensor, np.ndarray]

#: the reference's expansion sizes at the first clustering, whatever the flags say (spec step 9)
WARMUP_K2 = (3, 3)
#: score cells (query rows x N) per search chunk: 2^25 float32 = 128 MiB, three such buffers at once
_SEARCH_CELLS = 1 << 25


def expansion_sizes(epoch: Optional[int], k2_intra: int, k2_inter: int) -> Tuple[int, int]:
    """(k2_intra, k2_inter) the reference uses at ``epoch``: 3/3 at epoch 0, the given ones after.

    ``epoch=None`` (``dsgl cluster``, no training) uses the given sizes.
    """
    return WARMUP_K2 if epoch == 0 else (k2_intra, k2_inter)


def _as_tensor(features: Features) -> torch.Tensor:
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(features))
    return x.detach().float()


def camera_ranked_lists(
    features: Features, cameras: np.ndarray, intra_len: int, inter_len: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first ``intra_len`` / ``inter_len`` entries of every query's intra and inter ranking.

    Returns (intra ids, intra inner products, inter ids, inter inner products). Sorting is by
    decreasing f_i.f_j (increasing D) within each camera group; self is forced to position 0 of
    its intra list (the reference's D[i,i] ~ 0 puts it there unless an exact duplicate ties).
    Needs ``max(intra_len, inter_len) <= N``.
    """
    x = _as_tensor(features)
    n = x.shape[0]
    k = max(intra_len, inter_len)
    cams = torch.as_tensor(np.asarray(cameras, dtype=np.int64), device=x.device)
    out_ids = {"intra": np.empty((n, intra_len), dtype=np.int64), "inter": np.empty((n, inter_len), dtype=np.int64)}
    out_sims = {"intra": np.empty((n, intra_len), dtype=np.float32),
                "inter": np.empty((n, inter_len), dtype=np.float32)}
    chunk = max(1, min(n, _SEARCH_CELLS // max(1, n)))
    arange = torch.arange(n, device=x.device)
    neg_inf = torch.tensor(float("-inf"), device=x.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores = x[start:stop] @ x.T
        rows = torch.arange(stop - start, device=x.device)
        scores[rows, arange[start:stop]] = float("inf")   # self first among its own camera
        same = cams[start:stop, None] == cams[None, :]
        s_same, i_same = torch.where(same, scores, neg_inf).topk(k, dim=1)
        s_other, i_other = torch.where(same, neg_inf, scores).topk(k, dim=1)
        del scores, same
        # entries that fell into the -inf padding: the group had fewer than k members
        ok_same, ok_other = s_same > float("-inf"), s_other > float("-inf")
        self_sim = (x[start:stop] * x[start:stop]).sum(1)
        s_same[:, 0] = torch.where(i_same[:, 0] == arange[start:stop], self_sim, s_same[:, 0])
        for name, first, second, length in (("intra", (s_same, i_same, ok_same), (s_other, i_other, ok_other),
                                             intra_len),
                                            ("inter", (s_other, i_other, ok_other), (s_same, i_same, ok_same),
                                             inter_len)):
            sims = torch.cat([first[0], second[0]], 1)
            ids = torch.cat([first[1], second[1]], 1)
            valid = torch.cat([first[2], second[2]], 1)
            # valid entries first, each group in its own order: a stable sort on the validity flag
            order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :length]
            out_ids[name][start:stop] = ids.gather(1, order).cpu().numpy()
            out_sims[name][start:stop] = sims.gather(1, order).cpu().numpy()
    return out_ids["intra"], out_sims["intra"], out_ids["inter"], out_sims["inter"]


def encode_camera_aware(
    features: Features, cameras: np.ndarray, k1_intra: int = 5, k1_inter: int = 20,
    k2_intra: int = 2, k2_inter: int = 4, k2: int = 6,
) -> sp.csr_matrix:
    """V' of spec steps 5-12: softmax(-D) over the camera-aware k-reciprocal set, then the expansion."""
    intra_len = max(k1_intra + 1, k2_intra)
    inter_len = max(k1_inter + 1, k2_inter)
    intra, intra_s, inter, inter_s = camera_ranked_lists(features, cameras, intra_len, inter_len)
    support = (reciprocal_sets(intra, k1_intra) + reciprocal_sets(inter, k1_inter)).tocsr()
    support.sort_indices()
    support.data[:] = 1.0
    rows, cols = support_pairs(support)
    # every set member is in one of the two lists, so its inner product is read, not recomputed
    sims = _pair_similarities(features, rows, cols, np.concatenate([intra_s, inter_s], 1),
                              np.concatenate([intra, inter], 1)).astype(np.float64)
    v = encode(support, 2.0 - 2.0 * sims)
    if k2 == 1:   # the reference's gate: the plain mode's k2 also switches the camera-aware expansion off
        return v
    n = v.shape[0]
    q = np.concatenate([intra[:, :k2_intra], inter[:, :k2_inter]], 1)
    width = q.shape[1]
    mean = sp.csr_matrix((np.full(q.size, 1.0 / width), q.ravel(), np.arange(0, q.size + 1, width)), shape=(n, n))
    mean.sum_duplicates()   # a spill-over duplicate is counted twice, as in the reference
    out = (mean @ v.astype(np.float64)).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def check_camera_aware(n: int, k1_intra: int, k1_inter: int, k2_intra: int, k2_inter: int) -> None:
    """One-line errors for sizes the reference cannot run (its partial sort reads only k + 2 places)."""
    for flag, value, least in (("--k1-intra", k1_intra, 1), ("--k1-inter", k1_inter, 1),
                               ("--k2-intra", k2_intra, 1), ("--k2-inter", k2_inter, 0)):
        if value < least:
            raise DsglError(f"{flag} must be at least {least}, got {value}", exit_code=2)
    if k2_intra > k1_intra + 2 or k2_inter > k1_inter + 2:
        raise DsglError(f"--k2-intra {k2_intra} / --k2-inter {k2_inter} may not exceed --k1-intra + 2 "
                        f"({k1_intra + 2}) / --k1-inter + 2 ({k1_inter + 2}), the lists the reference orders",
                        exit_code=2)
    need = max(k1_intra + 1, k1_inter + 1, k2_intra, k2_inter)
    if need > n:
        raise DsglError(f"--k1-inter {k1_inter} asks for {need} neighbours per image but only {n} images are "
                        f"clustered; use --k1-inter {max(1, n - 1)} or less", exit_code=2)


def compute_camera_aware_jaccard(
    features: Features,
    cameras: np.ndarray,
    k1_intra: int = 5,
    k1_inter: int = 20,
    k2_intra: int = 2,
    k2_inter: int = 4,
    k2: int = 6,
    max_distance: float = 0.95,
) -> sp.csr_matrix:
    """CA-Jaccard distance of unit feature rows as a sparse N x N float32 matrix (docs/ca-jaccard.md).

    Same form as :func:`dsgl_cli.clustering.jaccard.compute_jaccard_distance`: every pair within
    ``max_distance`` stored, the diagonal as explicit zeros, the attribute ``max_distance`` set.
    ``cameras`` are N integer ids (only equality matters). Features stay on their device: on CUDA
    the search and the min-join run there.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise DsglError("features must be a non-empty N x d matrix; extract features first")
    n = int(features.shape[0])
    cameras = np.asarray(cameras)
    if cameras.shape != (n,):
        given = cameras.shape[0] if cameras.ndim else 0
        raise DsglError(f"camera-aware Jaccard needs one camera id per image: {given} ids for {n} images")
    if not 0.0 < max_distance < 1.0:
        raise DsglError(f"max_distance must lie in (0, 1), got {max_distance}", exit_code=2)
    check_camera_aware(n, k1_intra, k1_inter, k2_intra, k2_inter)
    _, codes = np.unique(cameras, return_inverse=True)
    v = encode_camera_aware(features, codes.reshape(-1), k1_intra, k1_inter, k2_intra, k2_inter, k2)
    device = features.device if isinstance(features, torch.Tensor) else None
    return jaccard_from_encoding(v, max_distance, device)
