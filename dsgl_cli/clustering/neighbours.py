"""Top-k inner-product neighbour search over unit feature rows (method.md 4.2, the search step).

Fast path with an honest fallback: faiss GPU (features on CUDA and a GPU-enabled faiss) ->
chunked torch matmul + topk on CUDA -> faiss CPU ``IndexFlatIP``. ``exact=False`` swaps in an
approximate faiss ``IndexIVFFlat`` for very large N.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from dsgl_cli.errors import DsglError

Features = Union[torch.Tensor, np.ndarray]

faiss: Any
try:  # faiss is a hard dependency, but a broken install should fall back to torch, not crash.
    import faiss
except Exception:  # pragma: no cover - exercised only without faiss
    faiss = None


def faiss_has_gpu() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover
        return False


def _as_numpy(features: Features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(features, dtype=np.float32)


def _self_first(sims: np.ndarray, idx: np.ndarray, self_sim: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Put row i first in its own list (even when duplicates tie with it), keep the rest in order."""
    n, k = idx.shape
    rows = np.arange(n, dtype=np.int64)
    cat_idx = np.concatenate([rows[:, None], idx], axis=1)
    cat_sims = np.concatenate([self_sim[:, None], sims], axis=1)
    # key 0: the prepended self, 1: other neighbours in search order, 2: the self the search found
    key = np.ones((n, k + 1), dtype=np.int8)
    key[:, 0] = 0
    key[:, 1:][idx == rows[:, None]] = 2
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(cat_sims, order, axis=1),
            np.take_along_axis(cat_idx, order, axis=1))


def _torch_topk(x: torch.Tensor, k: int, chunk: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by chunked matmul + topk (the CUDA path when faiss has no GPU support)."""
    chunk = chunk or max(64, min(4096, (1 << 28) // max(1, x.shape[0])))  # <= 1 GiB of scores
    dists, idxs = [], []
    for start in range(0, x.shape[0], chunk):
        sim = x[start:start + chunk] @ x.T
        d, i = sim.topk(k, dim=1)
        dists.append(d.cpu())
        idxs.append(i.cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy().astype(np.int64)


def _faiss_ivf(x: np.ndarray, k: int, nlist: Optional[int], nprobe: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    nlist = int(nlist) if nlist else max(1, int(4 * math.sqrt(n)))
    nlist = min(nlist, max(1, n // 39))  # faiss wants ~39 training points per list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    train = x if n <= 256 * nlist else x[rng.choice(n, 256 * nlist, replace=False)]
    index.train(train)
    index.add(x)
    index.nprobe = int(nprobe) if nprobe else max(1, min(nlist, int(round(nlist / 16)) or 1))
    sims, idx = index.search(x, k)
    return sims, idx.astype(np.int64)


def knn_search(
    features: Features,
    k: int,
    exact: bool = True,
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours of every row by inner product, self first (method.md 4.2).

    Returns ``(sims, idx)`` as numpy arrays of shape N x k: ``sims`` holds inner products
    (higher = nearer), ``idx`` int64 row ids. Row i always starts with i itself, even when
    duplicate features tie with it. ``exact=False`` uses an approximate IVF index with
    ``nlist`` lists (default 4 sqrt(N)) and ``nprobe`` probes (default nlist/16); missing
    results (-1) are filled with i.
    """
    n = int(features.shape[0])
    if n == 0:
        raise DsglError("cannot search neighbours of an empty feature set; extract features first")
    if k < 1:
        raise DsglError(f"k must be at least 1, got {k}", exit_code=2)
    k = min(int(k), n)
    on_cuda = isinstance(features, torch.Tensor) and features.is_cuda
    if not exact:
        if faiss is None:
            raise DsglError("the approximate (IVF) search needs faiss; install faiss-cpu or faiss-gpu")
        x = _as_numpy(features)
        sims, idx = _faiss_ivf(x, k, nlist, nprobe)
    elif on_cuda and faiss_has_gpu():
        x = _as_numpy(features)
        res = faiss.StandardGpuResources()
        assert isinstance(features, torch.Tensor)   # on_cuda
        index = features.device.index
        device = index if index is not None else torch.cuda.current_device()
        sims, idx = faiss.knn_gpu(res, x, x, k, metric=faiss.METRIC_INNER_PRODUCT, device=device)
        idx = idx.astype(np.int64)
    elif on_cuda or faiss is None:
        x_t = features if isinstance(features, torch.Tensor) else torch.from_numpy(_as_numpy(features))
        sims, idx = _torch_topk(x_t.detach().float(), k)
    else:
        x = _as_numpy(features)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, k)
        idx = idx.astype(np.int64)
    missing = idx < 0
    if missing.any():
        rows = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], idx.shape)
        idx = np.where(missing, rows, idx)
    if isinstance(features, torch.Tensor):
        self_sim = (features.detach().float() ** 2).sum(1).cpu().numpy()
    else:
        x = np.asarray(features, dtype=np.float32)
        self_sim = np.einsum("ij,ij->i", x, x)
    return _self_first(np.asarray(sims, dtype=np.float32), idx, self_sim.astype(np.float32))
