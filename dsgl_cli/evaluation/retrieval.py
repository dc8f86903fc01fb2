"""Query/gallery evaluation of a model: features, distances, metrics (method.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dsgl_cli.data.datasets import ImageRecord
from dsgl_cli.data.transforms import test_transform
from dsgl_cli.evaluation.metrics import RankResult, evaluate_rank
from dsgl_cli.features import extract_features


@dataclass
class Retrieval:
    """Features, distances and metrics of one evaluation."""

    query_features: torch.Tensor
    gallery_features: torch.Tensor
    distmat: torch.Tensor
    metrics: RankResult
    rerank_metrics: Optional[RankResult] = None
    rerank_distmat: Optional[np.ndarray] = None


def squared_euclidean(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """||q - g||^2 = 2 - 2 q.g for unit rows."""
    return (2.0 - 2.0 * qf @ gf.t()).clamp_min_(0.0)


def evaluate_model(
    model: nn.Module,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    height: int,
    width: int,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 4,
    flip: bool = False,
    amp: bool = True,
    rerank: bool = False,
    advance: Optional[Callable[[int], None]] = None,
    channels_last: bool = False,
) -> Retrieval:
    """Extract query and gallery features in one pass and score the ranking."""
    paths = [r.path for r in query] + [r.path for r in gallery]
    feats = extract_features(model, paths, test_transform(height, width), device, batch_size, workers,
                             flip=flip, amp=amp, advance=advance, channels_last=channels_last)
    return score_features(feats, query, gallery, rerank)


def score_features(feats: torch.Tensor, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord],
                   rerank: bool = False) -> Retrieval:
    """The ranking of features extracted for [query; gallery] (in that order), scored."""
    qf, gf = feats[: len(query)], feats[len(query):]
    q_pids = np.array([r.pid for r in query])
    g_pids = np.array([r.pid for r in gallery])
    q_cams = np.array([r.camid for r in query])
    g_cams = np.array([r.camid for r in gallery])
    distance = squared_euclidean(qf, gf)
    metrics = evaluate_rank(distance, q_pids, g_pids, q_cams, g_cams)
    out = Retrieval(qf, gf, distance, metrics)
    if rerank:
        from dsgl_cli.evaluation.reranking import rerank_features

        out.rerank_distmat = rerank_features(qf, gf)
        out.rerank_metrics = evaluate_rank(out.rerank_distmat, q_pids, g_pids, q_cams, g_cams)
    return out
