"""The state an interrupted run keeps, so that resuming it continues exactly where it stopped.

A checkpoint always describes a state from which the uninterrupted run's next operation follows:
the end of an epoch (the scheduler stepped once per completed epoch); an epoch stopped between two
steps (`EpochProgress`: its pseudo labels, its memories, the steps done and their loss sums), which
resumes at the next step; or an epoch trained but not yet evaluated (`pending`), which resumes with
its evaluation. Batches, partners and augmentation are keyed by (seed, epoch, iteration, position),
so the resumed steps see the very images the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from dsgl_cli.clustering.label_free import LabelFreeFigures
from dsgl_cli.clustering.pseudo_labels import EpochLabels
from dsgl_cli.clustering.quality import LabelQuality
from dsgl_cli.training.records import EpochRecord

PROGRESS_KEY, PENDING_KEY, PREVIOUS_LABELS = "progress", "pending", "previous_labels"


@dataclass
class EpochProgress:
    """An epoch between two steps: everything its remaining steps need, and what they add up to."""

    epoch: int                      # counted from 0
    labels: EpochLabels
    memory: Any                     # the epoch's memory (`method.memory.DSGLMemory` or a test's stand-in)
    record: EpochRecord
    steps: int = 0                  # steps done
    sums: dict[str, float] = field(default_factory=dict)   # of each loss over those steps

    def state(self) -> dict[str, Any]:
        labels = self.labels
        return {"epoch": self.epoch, "steps": self.steps, "sums": dict(self.sums), "record": asdict(self.record),
                "memory": self.memory.state_dict(),
                "labels": {"labels": torch.from_numpy(np.asarray(labels.labels, dtype=np.int64)),
                           "num_clusters": labels.num_clusters, "num_outliers": labels.num_outliers,
                           "centroids": labels.centroids, "irrelevant": labels.irrelevant, "seconds": labels.seconds,
                           "quality": asdict(labels.quality) if labels.quality is not None else None,
                           "label_free": asdict(labels.label_free) if labels.label_free is not None else None,
                           "eps": labels.eps}}

    @classmethod
    def from_state(cls, state: dict[str, Any], memory_type: Any, device: torch.device) -> "EpochProgress":
        raw = state["labels"]
        labels = EpochLabels(raw["labels"].numpy(), int(raw["num_clusters"]), int(raw["num_outliers"]),
                             raw["centroids"].to(device),
                             raw["irrelevant"].to(device) if raw["irrelevant"] is not None else None,
                             float(raw["seconds"]), LabelQuality(**raw["quality"]) if raw["quality"] else None,
                             LabelFreeFigures(**raw["label_free"]) if raw.get("label_free") else None,
                             raw.get("eps"))
        return cls(epoch=int(state["epoch"]), labels=labels, memory=memory_type.from_state(state["memory"], device),
                   record=record_from(state["record"]), steps=int(state["steps"]),
                   sums={k: float(v) for k, v in state["sums"].items()})


def record_from(data: dict[str, Any]) -> EpochRecord:
    """An `EpochRecord` back from its saved fields."""
    return EpochRecord(**{**data, "losses": dict(data.get("losses") or {})})


def resume_state(progress: Optional[EpochProgress], pending: Optional[EpochRecord]) -> dict[str, Any]:
    """The extra checkpoint entries of an interrupted run (none at an epoch's end)."""
    out: dict[str, Any] = {}
    if progress is not None:
        out[PROGRESS_KEY] = progress.state()
    if pending is not None:
        out[PENDING_KEY] = asdict(pending)
    return out
