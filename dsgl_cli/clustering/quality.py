"""How good are the pseudo labels? Pairwise precision/recall, ARI, NMI against the true ids.

True identities of the train split are used only here, to report, never to train (method.md 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Union

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

Labels = Union[np.ndarray, torch.Tensor, list]

#: cluster-size histogram bins (inclusive lower, inclusive upper; None = open)
SIZE_BINS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, None))


def _as_int(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64).ravel()


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _dense_ids(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


@dataclass
class LabelQuality:
    """Pseudo-label quality of one clustering (outliers counted as singletons)."""

    num_images: int
    num_clusters: int
    num_outliers: int
    precision: float
    recall: float
    f_score: float
    ari: float
    nmi: float
    size_histogram: Dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def singletonize(pseudo_labels: Labels) -> np.ndarray:
    """Labels where every outlier (-1) becomes its own one-image cluster."""
    y = _as_int(pseudo_labels).copy()
    out = np.flatnonzero(y < 0)
    y[out] = (y.max() + 1 if y.size else 0) + np.arange(out.size)
    return y


def label_quality(pseudo_labels: Labels, true_ids: Labels) -> LabelQuality:
    """Pairwise P/R/F, ARI and NMI of pseudo labels against true identities, in O(N log N).

    Outliers (-1) count as singletons: they form no predicted pair (precision is over pairs
    put in one cluster), while their true pairs still count as missed (recall is over all
    same-identity pairs of the N images). ARI and NMI are computed on the same labelling.
    The size histogram counts real clusters only (outliers are reported in num_outliers).
    """
    y = _as_int(pseudo_labels)
    t = _as_int(true_ids)
    if y.shape != t.shape:
        raise ValueError(f"pseudo labels ({y.size}) and true ids ({t.size}) differ in length")
    pred = _dense_ids(singletonize(y))
    true = _dense_ids(t)
    # contingency counts of (predicted cluster, true id) cells
    cells = np.unique(pred * (int(true.max()) + 1 if true.size else 1) + true, return_counts=True)[1]
    tp = _pairs(cells)
    pred_pairs = _pairs(np.bincount(pred)) if pred.size else 0
    true_pairs = _pairs(np.bincount(true)) if true.size else 0
    precision = tp / pred_pairs if pred_pairs else 0.0
    recall = tp / true_pairs if true_pairs else 0.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    clustered = y[y >= 0]
    sizes = np.bincount(_dense_ids(clustered)) if clustered.size else np.zeros(0, dtype=np.int64)
    hist = {}
    for lo, hi in SIZE_BINS:
        name = f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
        hist[name] = int(((sizes >= lo) & (True if hi is None else sizes <= hi)).sum())
    both = y.size > 0
    return LabelQuality(
        num_images=int(y.size),
        num_clusters=int(sizes.size),
        num_outliers=int((y < 0).sum()),
        precision=float(precision),
        recall=float(recall),
        f_score=float(f_score),
        ari=float(adjusted_rand_score(true, pred)) if both else 0.0,
        nmi=float(normalized_mutual_info_score(true, pred)) if both else 0.0,
        size_histogram=hist,
    )
