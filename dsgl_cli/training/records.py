"""Typed results of a training run: one record per epoch (a metrics.jsonl row) and the run's summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from dsgl_cli.clustering.pseudo_labels import EpochLabels

LOSS_KEYS = ("loss_m", "loss_dis", "loss_kl")


@dataclass
class EpochRecord:
    """What one epoch measured; ``epoch`` counts completed epochs, so record 0 is the model before training.

    Retrieval figures are fractions in [0, 1] and stay None when the epoch was not evaluated.
    """

    epoch: int
    mAP: Optional[float] = None
    rank1: Optional[float] = None
    rank5: Optional[float] = None
    rank10: Optional[float] = None
    mINP: Optional[float] = None
    num_clusters: Optional[int] = None
    num_outliers: Optional[int] = None
    eps: Optional[float] = None                  # DBSCAN's eps this epoch (chosen by the rule under --eps auto)
    precision: Optional[float] = None
    recall: Optional[float] = None
    ari: Optional[float] = None
    cross_camera_share: Optional[float] = None   # of clusters spanning two cameras or more (label_free.py)
    intra_similarity: Optional[float] = None     # mean cosine within clusters
    ari_prev: Optional[float] = None             # agreement with the previous epoch's pseudo labels
    nmi_prev: Optional[float] = None
    losses: dict[str, float] = field(default_factory=dict)
    lr: Optional[float] = None
    seconds_extract: Optional[float] = None   # the train split's features
    seconds_cluster: Optional[float] = None   # pseudo labels and memories from those features
    seconds_train: Optional[float] = None
    seconds_eval: Optional[float] = None
    compute_dtype: Optional[str] = None   # what the steps computed in: float32, bf16 or fp16 (method.md 3.2)

    @property
    def evaluated(self) -> bool:
        return self.mAP is not None

    def describe(self, labels: "EpochLabels", cross_camera: bool = True) -> None:
        """Take the epoch's clustering figures: counts, quality against true ids, label-free figures; the
        cross-camera share only where the train split has two cameras or more (with one it is 0 whatever
        the clusters are, and says nothing)."""
        self.num_clusters, self.num_outliers = labels.num_clusters, labels.num_outliers
        self.eps = labels.eps
        if labels.quality is not None:
            q = labels.quality
            self.precision, self.recall, self.ari = q.precision, q.recall, q.ari
        if labels.label_free is not None:
            free = labels.label_free
            self.cross_camera_share = free.multi_camera_fraction if cross_camera else None
            self.intra_similarity = free.mean_intra_similarity
            self.ari_prev, self.nmi_prev = free.agreement_ari, free.agreement_nmi

    def row(self) -> dict[str, Any]:
        """The flat metrics.jsonl row: losses inline, absent figures left out."""
        data = asdict(self)
        losses = data.pop("losses")
        data.update(losses)
        return {k: (round(v, 3) if k.startswith("seconds_") else v) for k, v in data.items() if v is not None}


def run_facts(cfg: Any, device: Any, world_size: int) -> dict[str, Any]:
    """What a run resolves its settings to (written beside them in config.yaml, and by --print-config).

    ``cpu_threads`` is torch's intra-op thread count per process: it is part of what a run computes,
    since oneDNN's weight gradient of the stem convolution sums in another order with another count
    (of resnet18's 63 gradients on a 16 x 3 x 64 x 32 batch, the only one that changed from 1 to 2
    threads), and clustering and Adam turn that rounding into other pseudo labels. ``torchrun`` gives
    each process one thread (OMP_NUM_THREADS=1) where a lone process takes every core; see
    docs/distributed.md.
    """
    import torch

    from dsgl_cli import __version__
    from dsgl_cli.features import precision_of

    groups = cfg.train.bn_groups if cfg.train.bn_groups is not None else world_size
    return {"device": str(device), "compute_dtype": precision_of(device, cfg.amp), "world_size": world_size,
            "bn_groups": groups, "cpu_threads": torch.get_num_threads(), "dsgl_version": __version__}


@dataclass
class TrainResult:
    """How a run ended: the best mAP, the metrics.jsonl rows and the run directory (set by whoever knows it)."""

    best_mAP: float
    rows: list[dict[str, Any]]
    run_dir: Optional[Path] = None
