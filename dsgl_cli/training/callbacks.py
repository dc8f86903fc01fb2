"""The trainer's seam: evaluation, checkpoints, the metrics/curves log, TensorBoard and console output.

The trainer (`trainer.py`) only trains; at fixed points it calls these hooks, in list order. The
standard list (`standard_callbacks`) evaluates, then checkpoints (so "best" knows the new mAP), then
logs, then reports. A library user can pass another list: without `ConsoleReport` nothing is
printed. Under torchrun every rank calls the hooks; the ones that write or evaluate act on rank 0.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from dsgl_cli.config import RUN_FACTS
from dsgl_cli.console import counted
from dsgl_cli.errors import DsglError
from dsgl_cli.training.console_report import ConsoleReport
from dsgl_cli.training.hooks import Callback, loss_status
from dsgl_cli.training.records import EpochRecord, TrainResult, run_facts

if TYPE_CHECKING:
    from dsgl_cli.clustering.pseudo_labels import EpochLabels
    from dsgl_cli.data.datasets import ImageRecord
    from dsgl_cli.data.image_cache import ImageCache
    from dsgl_cli.training.run_dir import RunDir
    from dsgl_cli.training.trainer import Trainer


class Evaluation(Callback):
    """mAP / CMC / mINP on query vs gallery every ``eval_step`` epochs, at the last one and before training."""

    evaluates = True

    def __init__(self, query: Sequence["ImageRecord"], gallery: Sequence["ImageRecord"], eval_step: int,
                 flip: bool = False) -> None:
        self.query, self.gallery = list(query), list(gallery)
        self.eval_step, self.flip = eval_step, flip
        self._images: Optional["ImageCache"] = None   # query + gallery decoded once (--augment-on device)

    def due(self, trainer: "Trainer", epoch: int) -> bool:
        return epoch == 0 or epoch % self.eval_step == 0 or epoch == trainer.cfg.train.epochs

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        if not self.due(trainer, record.epoch) or not trainer.dist.is_main:
            return
        from dsgl_cli.data.device_batches import augments_on_device
        from dsgl_cli.evaluation.retrieval import evaluate_model, score_features

        t0 = time.perf_counter()
        cfg = trainer.cfg
        if augments_on_device(cfg.data.augment_on, trainer.device):
            images = self._decoded(trainer)
            with trainer.callbacks.stage("evaluate", len(images)) as bar:
                result = score_features(trainer.encode_decoded(images, bar.advance, flip=self.flip),
                                        self.query, self.gallery)
        else:
            with trainer.callbacks.stage("evaluate", len(self.query) + len(self.gallery)) as bar:
                result = evaluate_model(trainer.model, self.query, self.gallery, cfg.data.height, cfg.data.width,
                                        trainer.device, workers=cfg.data.workers, flip=self.flip, amp=cfg.amp,
                                        advance=bar.advance, channels_last=cfg.channels_last)
        m = result.metrics
        record.mAP, record.rank1, record.rank5, record.rank10, record.mINP = m.mAP, m.rank1, m.rank5, m.rank10, m.mINP
        record.seconds_eval = time.perf_counter() - t0

    def _decoded(self, trainer: "Trainer") -> "ImageCache":
        """Query and gallery decoded once per run onto the training device: an evaluation then reads no file."""
        if self._images is None:
            from dsgl_cli.data.image_cache import decode_images

            c = trainer.cfg.data
            paths = [r.path for r in self.query] + [r.path for r in self.gallery]
            with trainer.callbacks.stage("decode query and gallery", len(paths)) as bar:
                cache = decode_images(paths, c.height, c.width, workers=c.workers, advance=bar.advance)
            self._images = cache.to(trainer.device)
            trainer.callbacks.message(f"query and gallery decoded once into {cache.nbytes / 2**20:.0f} MB on "
                                      f"{trainer.device.type}")
        return self._images


class Checkpointing(Callback):
    """The last checkpoint after every epoch (and before training), the initial model (``model_init.pth``,
    the untrained baseline), the best, the interrupted state.

    Best is the highest mAP; a run without a labelled query/gallery has none, and its best is its
    last epoch (docs/label-free.md: no figure without labels tracked mAP well enough on the demo data).
    """

    def __init__(self, run_dir: "RunDir") -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        if record.evaluated:
            best = record.epoch > 0 and (record.mAP or 0.0) > trainer.best_map
        else:
            best = record.epoch > 0 and not trainer.evaluating
        if best and record.evaluated:
            trainer.best_map = float(record.mAP or 0.0)
        if not trainer.dist.is_main:
            return
        payload = trainer.checkpoint_payload(record.row())
        self.run_dir.save_checkpoint(payload)
        if record.epoch == 0:
            self.run_dir.save_checkpoint(payload, init=True)
        if best:
            self.run_dir.save_checkpoint(payload, best=True)
        trainer.checkpoint_path = self.run_dir.checkpoint

    def on_interrupt(self, trainer: "Trainer") -> None:
        """Save an epoch stopped between steps, or trained but not yet evaluated; otherwise the last
        end-of-epoch checkpoint on disk is already the state to resume from."""
        if trainer.dist.is_main and (trainer.progress is not None or trainer.pending is not None):
            self.run_dir.save_checkpoint(trainer.checkpoint_payload({"interrupted": True}, interrupted=True))
            trainer.checkpoint_path = self.run_dir.checkpoint


class MetricsLog(Callback):
    """config.yaml, one metrics.jsonl row per epoch, train.log lines and the training curves."""

    def __init__(self, run_dir: "RunDir", print_freq: int) -> None:
        self.run_dir, self.print_freq = run_dir, print_freq

    def on_fit_start(self, trainer: "Trainer") -> None:
        from dsgl_cli.config import config_to_dict

        if trainer.dist.is_main:
            facts = run_facts(trainer.cfg, trainer.device, trainer.dist.world_size)
            self.run_dir.write_config({**config_to_dict(trainer.cfg), RUN_FACTS: facts})
            # a fresh run starts an empty file; a resumed one keeps the rows up to its checkpoint
            self.run_dir.truncate_metrics(-1 if trainer.fresh else trainer.final_rows)

    def on_clustered(self, trainer: "Trainer", epoch: int, labels: "EpochLabels") -> None:
        if trainer.dist.is_main:
            q = labels.quality
            chosen = f" at eps {labels.eps} (auto)" if trainer.cfg.cluster.eps == "auto" else ""
            scores = f", precision {q.precision:.3f} recall {q.recall:.3f} ARI {q.ari:.3f}" if q else ""
            self.run_dir.log(f"epoch {epoch + 1}: {counted(labels.num_clusters, 'cluster')}, "
                             f"{counted(labels.num_outliers, 'outlier')}{chosen}{scores} ({labels.seconds:.1f}s)")

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, means: dict[str, float]) -> None:
        if trainer.dist.is_main and step % self.print_freq == 0:
            self.run_dir.log(f"epoch {epoch + 1} step {step}/{trainer.cfg.train.iters} "
                             f"loss {means.get('loss', math.nan):.4f} {loss_status(means)}")

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        if not trainer.dist.is_main:
            return
        from dsgl_cli.training.curves import draw_curves

        row = record.row()
        self.run_dir.append_metrics(row)
        self.run_dir.log(f"epoch {record.epoch}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"))
        draw_curves(self.run_dir.read_metrics(), self.run_dir.path / "training_curves.png")

    def message(self, text: str) -> None:
        self.run_dir.log(text)


class TensorBoardLog(Callback):
    """Scalars of every metrics row (per epoch) and the running losses (per step) for TensorBoard."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DsglError("--tensorboard needs the tensorboard package: pip install tensorboard",
                            exit_code=2) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int, means: dict[str, float]) -> None:
        if trainer.dist.is_main:
            for key, value in means.items():
                self.writer.add_scalar(f"step/{key}", value, trainer.iteration)

    def on_epoch_end(self, trainer: "Trainer", record: EpochRecord) -> None:
        if not trainer.dist.is_main:
            return
        for key, value in record.row().items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, record.epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: "Trainer", result: TrainResult) -> None:
        self.writer.close()

    def on_interrupt(self, trainer: "Trainer") -> None:
        self.writer.close()


def standard_callbacks(trainer_cfg: Any, run_dir: "RunDir", query: Sequence["ImageRecord"],
                       gallery: Sequence["ImageRecord"], quiet: bool = False) -> list[Callback]:
    """The command line's list: evaluate (where query and gallery carry ids), checkpoint, log,
    (TensorBoard,) report."""
    callbacks: list[Callback] = []
    if query and gallery:
        callbacks.append(Evaluation(query, gallery, trainer_cfg.train.eval_step, trainer_cfg.eval.flip))
    callbacks += [Checkpointing(run_dir), MetricsLog(run_dir, trainer_cfg.train.print_freq)]
    if trainer_cfg.train.tensorboard and run_dir.enabled:
        callbacks.append(TensorBoardLog(run_dir.path / "tensorboard"))
    if not quiet:
        callbacks.append(ConsoleReport())
    return callbacks
