"""The console report of a training run: what a person watching sees (a `Callback`).

The epoch and ETA over the stage bars, a loss legend once, one line per epoch (losses, pseudo
labels, retrieval, durations) and the total time at the end; `callbacks.standard_callbacks` adds
it last. On a terminal the bars are live; in a file or a pipe only the lines are written.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, ContextManager, Optional

from dsgl_cli.console import counted
from dsgl_cli.training.hooks import Callback, Progress, loss_status
from dsgl_cli.training.records import EpochRecord, TrainResult

if TYPE_CHECKING:
    from dsgl_cli.training.trainer import Trainer


class ConsoleReport(Callback):
    """What a person watching sees: the run's epoch and ETA over the stage bars, a loss legend once, one
    line per epoch (losses, pseudo labels, retrieval, durations) and the total time at the end.

    On a terminal the bars are live; in a file or a pipe only the lines are written (`console.py`).
    """

    #: what the short loss names of the progress line and the epoch lines mean (method.md 5.1-5.3)
    LEGEND = {"loss_m": "m = hybrid cluster-memory loss (L_m)",
              "loss_dis": "dis = disentangled contrastive loss (L_dis)",
              "loss_kl": "kl = relative entropy between an image and its partner (L_kl)"}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.epochs = 0                         # the run's last epoch
        self.first = 0                          # epochs completed before this process started
        self.done = 0                           # epochs completed so far
        self.initial_pending = False            # the model before training is still to be evaluated
        self.started: Optional[float] = None    # when fit started
        self.loop_started: Optional[float] = None   # when this process's first epoch started
        self.last_end: Optional[float] = None   # when the last epoch ended
        self.legend_shown = False

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.epochs = trainer.cfg.train.epochs
        self.first = self.done = trainer.start_epoch
        self.initial_pending = trainer.fresh
        self.started = self.loop_started = self.last_end = self.clock()

    def eta(self) -> Optional[float]:
        """Seconds left: the mean epoch of this process times the epochs left, less the current one's time."""
        trained = self.done - self.first
        if trained <= 0 or self.loop_started is None or self.last_end is None:
            return None
        per_epoch = (self.last_end - self.loop_started) / trained
        return max(0.0, per_epoch * (self.epochs - self.done) - (self.clock() - self.last_end))

    def overall(self) -> str:
        """'epoch 3/16, ETA 4 min': the line over the stage bars."""
        from dsgl_cli.console import format_eta

        if not self.epochs:
            return ""
        if self.initial_pending:
            return f"the model before training, then {counted(self.epochs, 'epoch')}"
        eta = self.eta()
        return (f"epoch {min(self.done + 1, self.epochs)}/{self.epochs}"
                + (f", ETA {format_eta(eta)}" if eta is not None else ""))

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, means: dict[str, float]) -> None:
        if not self.legend_shown:
            from dsgl_cli.console import info

            self.legend_shown = True
            parts = [text for key, text in self.LEGEND.items() if key in means]
            if parts:
                info("losses: " + ", ".join(parts))

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        from dsgl_cli.console import info

        self.epochs = trainer.cfg.train.epochs
        if record.epoch == 0:
            self.initial_pending = False
            self.loop_started = self.last_end = self.clock()
            if record.evaluated:
                info("initial model: " + "; ".join(self._retrieval(trainer, record)
                                                    + self._durations(record)))
            return
        self.done, self.last_end = record.epoch, self.clock()
        info(self.epoch_line(trainer, record))

    def epoch_line(self, trainer: "Trainer", record: EpochRecord) -> str:
        """'epoch 3/16: loss m .. dis .. kl ..; 57 clusters, ..; mAP ..; cluster 1.2 s, ..; ETA 4 min'."""
        from dsgl_cli.console import format_eta

        parts = [f"loss {loss_status(record.losses)}"] if loss_status(record.losses) else []
        labels = [counted(record.num_clusters, "cluster")] if record.num_clusters is not None else []
        if record.num_outliers is not None:
            labels.append(counted(record.num_outliers, "outlier"))
        labels += [f"{name} {value:.3f}" for name, value in (("precision", record.precision),
                                                             ("recall", record.recall), ("ARI", record.ari))
                   if value is not None]
        parts += [", ".join(labels)] if labels else []
        parts += self._retrieval(trainer, record) + self._durations(record)
        eta = self.eta()
        if eta is not None and record.epoch < self.epochs:
            parts.append(f"ETA {format_eta(eta)}")
        return f"epoch {record.epoch}/{self.epochs}: " + "; ".join(parts)

    @staticmethod
    def _retrieval(trainer: "Trainer", record: EpochRecord) -> list[str]:
        if not record.evaluated:
            return []
        text = f"mAP {record.mAP:.1%} rank-1 {record.rank1 or 0.0:.1%}"
        if record.epoch > 0:
            text += f" (best {trainer.best_map:.1%}" + (", new best)" if trainer.best_map == record.mAP else ")")
        return [text]

    @staticmethod
    def _durations(record: EpochRecord) -> list[str]:
        times = [f"{name} {seconds:.1f} s" for name, seconds in (
            ("extract", record.seconds_extract), ("cluster", record.seconds_cluster),
            ("train", record.seconds_train), ("eval", record.seconds_eval))
            if seconds is not None]
        return [", ".join(times)] if times else []

    def on_fit_end(self, trainer: "Trainer", result: TrainResult) -> None:
        from dsgl_cli.console import format_duration, info

        if self.started is not None:
            span = counted(self.done, "epoch") if self.first == 0 else f"epochs {self.first + 1}-{self.done}"
            info(f"training took {format_duration(self.clock() - self.started)} ({span})")

    def message(self, text: str) -> None:
        from dsgl_cli.console import info

        info(text)

    def stage(self, name: str, total: Optional[int]) -> ContextManager[Optional[Progress]]:
        from dsgl_cli.console import stage

        return stage(name, total, context=self.overall)
