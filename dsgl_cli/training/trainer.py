"""The DSGL training loop: per epoch, cluster -> ``iters`` steps -> the end-of-epoch callbacks.

`fit()` reads top to bottom; evaluation, checkpoints, logs and console output are callbacks
(`callbacks.py`), one step is `step.TrainStep`. The trainer never prints.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dsgl_cli.config import RunConfig, config_to_dict
from dsgl_cli.console import counted
from dsgl_cli.data.augment import KeyedTrainAugment
from dsgl_cli.data.batch_augment import BatchAugment
from dsgl_cli.data.device_batches import DeviceBatches, augments_on_device
from dsgl_cli.data.image_cache import ImageCache, decode_images
from dsgl_cli.data.loaders import checked, train_loader
from dsgl_cli.data.sampler import IterationBatchSampler, PseudoIdentitySampler
from dsgl_cli.data.transforms import test_transform
from dsgl_cli.errors import DsglError, RaisedOnEveryRank, RunInterrupted, signal_exit_code
from dsgl_cli.features import encode_cached, extract_features
from dsgl_cli.training.batch_norm import use_group_batch_norm
from dsgl_cli.training.compiled import compile_enabled
from dsgl_cli.training.hooks import Callback, Callbacks, loss_status
from dsgl_cli.training.interrupts import StopSignals, interrupted_line
from dsgl_cli.training.records import EpochRecord, TrainResult
from dsgl_cli.training.resume import (
    PENDING_KEY,
    PREVIOUS_LABELS,
    PROGRESS_KEY,
    EpochProgress,
    record_from,
    resume_state,
)
from dsgl_cli.training.step import (
    STEP_KEYS,
    LossTotals,
    Memory,
    StepInterrupted,
    TrainingDiverged,
    TrainStep,
    adam,
)

if TYPE_CHECKING:
    from dsgl_cli.clustering.pseudo_labels import EpochLabels
    from dsgl_cli.data.datasets import ImageRecord
    from dsgl_cli.training.distributed import Distributed

#: features -> the epoch's pseudo labels (method.md 4); replaceable in tests
ClusterFn = Callable[[torch.Tensor], "EpochLabels"]
#: (features, the epoch's labels) -> the epoch's memory (method.md 4.5-4.7); replaceable in tests
MemoryFactory = Callable[[torch.Tensor, "EpochLabels"], Memory]


class Trainer:
    """Runs DSGL on the train split of a data set; library code, it never parses flags."""

    def __init__(self, cfg: RunConfig, train: Sequence["ImageRecord"], model: nn.Module, device: torch.device,
                 callbacks: Sequence[Callback], dist: Optional["Distributed"] = None,
                 cluster_fn: Optional[ClusterFn] = None, memory_factory: Optional[MemoryFactory] = None,
                 memory_type: Optional[type] = None, train_labelled: bool = True) -> None:
        from dsgl_cli.method.memory import DSGLMemory
        from dsgl_cli.training.distributed import Distributed

        self.cfg, self.model, self.device = cfg, model, device
        self.dist = dist or Distributed.single()
        self.callbacks = Callbacks(callbacks)
        # Adam on trainable parameters (the neck's frozen bias stays out) and a per-epoch StepLR
        self.optimizer = adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                              weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.train.step_size, gamma=0.1)
        self.train_paths = [r.path for r in train]
        self.train_cams = np.array([r.camid for r in train])
        # diagnostics only, never trained on; None where nobody labelled the train split
        self.train_ids = np.array([r.pid for r in train]) if train_labelled else None
        self.previous_labels: Optional[np.ndarray] = None   # last epoch's pseudo labels, for ari_prev
        self.cluster_fn = cluster_fn or self._make_pseudo_labels
        self.memory_factory = memory_factory or self._make_memory
        self.memory_type = memory_type or DSGLMemory    # how an interrupted epoch's memory is rebuilt
        local_groups = self.dist.local_bn_groups(cfg.train.bn_groups, cfg.train.batch_size)
        self.bn_groups = local_groups * self.dist.world_size
        use_group_batch_norm(model)   # anchors and partners in one forward, their statistics apart
        self.train_model = self.dist.wrap(model, device, sync_bn=cfg.train.sync_bn)
        self.step = TrainStep(model, self.train_model, self.optimizer, device, self.dist, cfg.amp,
                              use_partner=cfg.train.memorybank == "DLhybrid", channels_last=cfg.channels_last,
                              bn_groups=local_groups, joint=not cfg.train.sync_bn,
                              compile=compile_enabled(cfg.compile, device), notify=self.callbacks.message)
        if device.type == "cuda":   # every step has the same input shapes: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark = True
        self.augment = KeyedTrainAugment(cfg.data.height, cfg.data.width, cfg.train.seed)
        self.batch_augment = BatchAugment(cfg.data.height, cfg.data.width)   # the same draws, whole batches
        self._train_images: Optional[ImageCache] = None
        self.start_epoch = 0          # epochs completed before this process started
        self.epochs_done = 0          # epochs completed so far
        self.iteration = 0            # optimisation steps so far, over the whole run
        self.best_map = -1.0
        self.checkpoint_path: Optional[Path] = None   # the resumable state on disk, once written
        self.seconds_extract = 0.0    # the last extraction of the train features
        self.fresh = True              # no checkpoint resumed: record 0 (the model before training) is due
        self.progress: Optional[EpochProgress] = None   # the epoch between two steps (resume.py)
        self.pending: Optional[EpochRecord] = None      # an epoch trained but not yet through its end
        self.signals = StopSignals(notify=self.callbacks.message)
        # whether anything measures mAP: without it, the best checkpoint is the last epoch's
        self.evaluating = any(cb.evaluates for cb in self.callbacks)

    # ----- the loop -----------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """float32, bf16 or fp16: what the steps compute in (method.md 3.2)."""
        return self.step.precision

    def fit(self) -> TrainResult:
        """Train to the last epoch; Ctrl-C or SIGTERM keep a resumable checkpoint, a NaN the last good one."""
        if self.finished:
            self.callbacks.message(f"the run already finished its {counted(self.epochs_done, 'epoch')}; to train on, "
                                   f"resume with --epochs N (N > {self.epochs_done})")
            return TrainResult(best_mAP=self.best_map, rows=[])
        self.callbacks.on_fit_start(self)
        rows: list[dict[str, Any]] = []
        try:
            with self.signals.installed():
                if self.fresh:   # record 0: the model before training (evaluated, checkpointed, logged)
                    self._end_epoch(EpochRecord(epoch=0, lr=self.lr))
                if self.pending is not None:   # resumed between an epoch's training and its evaluation
                    self._end_epoch(self.pending)
                    rows.append(self.pending.row())
                    self.pending = None
                for epoch in range(self.epochs_done, self.cfg.train.epochs):
                    rows.append(self._run_epoch(epoch))
                result = TrainResult(best_mAP=self.best_map, rows=rows)
                self.callbacks.on_fit_end(self, result)
        except (KeyboardInterrupt, StepInterrupted) as stop:
            try:
                self.callbacks.on_interrupt(self)   # saves the resumable state
            except KeyboardInterrupt:   # a signal during that save: it finished, or a second one abandoned it
                pass
            code = signal_exit_code(getattr(stop, "signum", None) or self.signals.requested or signal.SIGINT)
            raise RunInterrupted(interrupted_line(self.checkpoint_path), exit_code=code) from None
        except TrainingDiverged as exc:
            kept = (f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path
                    else "no checkpoint was written yet")
            raise TrainingDiverged(f"{exc} at epoch {self.epochs_done + 1}; the run stopped and {kept}; "
                                   f"try a lower --lr") from None
        return result

    @property
    def finished(self) -> bool:
        """A resumed run with nothing left to do."""
        return (not self.fresh and self.epochs_done >= self.cfg.train.epochs and self.progress is None
                and self.pending is None)

    @property
    def final_rows(self) -> int:
        """The last epoch whose metrics row is final (a pending epoch's row is written again)."""
        return self.epochs_done - (1 if self.pending is not None else 0)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        """Cluster, train the epoch's steps, step the schedule, then the end-of-epoch callbacks."""
        if self.progress is None or self.progress.epoch != epoch:
            record = EpochRecord(epoch=epoch + 1, lr=self.lr)   # the rate this epoch trains with
            t0 = time.perf_counter()
            labels, memory = self.cluster_epoch(epoch)
            record.seconds_extract = self.seconds_extract
            record.seconds_cluster = time.perf_counter() - t0 - self.seconds_extract   # and the memories
            record.describe(labels, cross_camera=np.unique(self.train_cams).size > 1)
            self.progress = EpochProgress(epoch, labels, memory, record)
        progress = self.progress
        t0 = time.perf_counter()
        progress.record.losses = self.train_epoch(progress)
        progress.record.seconds_train = (progress.record.seconds_train or 0.0) + time.perf_counter() - t0
        self.signals.raise_if_requested()   # a stop during the last step: save before the schedule moves
        record, self.progress, self.pending = progress.record, None, progress.record
        self.scheduler.step()
        self.epochs_done = epoch + 1
        self._end_epoch(record)
        self.pending = None
        return record.row()

    def _end_epoch(self, record: EpochRecord) -> None:
        record.compute_dtype = self.precision
        self.callbacks.on_epoch_end(self, record)
        self.dist.barrier()   # the other ranks wait while rank 0 evaluates and writes

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ----- once per epoch: pseudo labels and memories (method.md 4) ----------------------------
    def extract_train_features(self) -> torch.Tensor:
        c = self.cfg
        transform = test_transform(c.data.height, c.data.width)
        self.dist.sync_buffers(self.model)   # every shard with the same (rank 0's) BatchNorm statistics
        if augments_on_device(c.data.augment_on, self.device):   # from the decoded images, as training reads them
            cache = self._decoded_train_images()
            with self.callbacks.stage("extract", len(self.train_paths)) as bar:
                return self.dist.extract(range(len(self.train_paths)),
                                         lambda rows: self.encode_decoded(cache, bar.advance, rows))
        with self.callbacks.stage("extract", len(self.train_paths)) as bar:
            return self.dist.extract(self.train_paths, lambda paths: extract_features(
                self.model, paths, transform, self.device, batch_size=128, workers=c.data.workers,
                amp=c.amp, advance=bar.advance, channels_last=c.channels_last))

    def encode_decoded(self, cache: ImageCache, advance: Optional[Callable[[int], None]] = None,
                       rows: Optional[Sequence[int]] = None, flip: bool = False) -> torch.Tensor:
        """Features of decoded images (all, or the contiguous range `rows`) on the device."""
        return encode_cached(self.model, cache, self.batch_augment, self.device, rows, flip=flip, amp=self.cfg.amp,
                             advance=advance, channels_last=self.cfg.channels_last)

    def _make_pseudo_labels(self, features: torch.Tensor) -> "EpochLabels":
        from dsgl_cli.clustering.distance import distance_settings
        from dsgl_cli.clustering.pseudo_labels import make_pseudo_labels

        c = self.cfg
        # epochs_done is the epoch being clustered: camera-aware's first clustering expands 3/3 (reference)
        return make_pseudo_labels(features, eps=c.cluster.eps, min_samples=c.cluster.min_samples,
                                  with_irrelevant=c.train.memorybank == "DLhybrid", true_ids=self.train_ids,
                                  cameras=self.train_cams, previous=self.previous_labels, epoch=self.epochs_done,
                                  **distance_settings(c.cluster))

    def _make_memory(self, features: torch.Tensor, labels: "EpochLabels") -> Memory:
        from dsgl_cli.method.memory import DSGLMemory

        c = self.cfg.train
        return DSGLMemory(features, torch.as_tensor(labels.labels, device=self.device), labels.irrelevant,
                          labels.centroids, mode=c.memorybank, temp=c.temp, momentum=c.momentum, smooth=c.smooth > 0)

    def _cluster_or_error(self, features: torch.Tensor) -> Any:
        """Pseudo labels, or (under torchrun) the error to raise on every rank so no rank waits forever."""
        try:
            return self.cluster_fn(features)
        except DsglError as exc:
            if not self.dist.active:
                raise
            return exc

    def cluster_epoch(self, epoch: int) -> tuple["EpochLabels", Memory]:
        """Pseudo labels and fresh memories for this epoch (method.md 4)."""
        t0 = time.perf_counter()
        features = self.extract_train_features()
        self.seconds_extract = time.perf_counter() - t0
        with self.callbacks.stage("cluster", None):
            labels = self.dist.run_on_main(lambda: self._cluster_or_error(features))
        labels = self.dist.broadcast_object(labels)
        if isinstance(labels, DsglError):
            raise RaisedOnEveryRank(str(labels), labels.exit_code)
        with self.dist.identical_memories(self.device):   # bitwise the same on every rank under DDP
            memory = self.memory_factory(features, labels)
        self.previous_labels = np.asarray(labels.labels)
        self.callbacks.on_clustered(self, epoch, labels)
        return labels, memory

    # ----- the steps of one epoch (method.md 5) ---------------------------------------------
    def train_epoch(self, progress: EpochProgress) -> dict[str, float]:
        """The epoch's remaining steps: loss, backward, Adam step, then the memory update; the mean losses.

        Signals only raise a flag here, checked at every step: the state is never caught half-updated.
        """
        cfg, epoch, labels, memory = self.cfg, progress.epoch, progress.labels, progress.memory
        sampler = PseudoIdentitySampler(labels.labels, self.train_cams, cfg.train.num_instances)
        try:   # the same on every rank: the global batch comes from one (seed, epoch) stream
            batches = IterationBatchSampler(sampler, cfg.train.batch_size, cfg.train.iters, cfg.train.seed, epoch,
                                            rank=self.dist.rank, world=self.dist.world_size, start=progress.steps)
        except DsglError as exc:
            raise RaisedOnEveryRank(str(exc), exc.exit_code) from None
        partners = cfg.train.memorybank == "DLhybrid"
        loader: Iterable[Any]
        if augments_on_device(cfg.data.augment_on, self.device):
            loader = DeviceBatches(self._decoded_train_images(), self.batch_augment, cfg.train.seed, epoch, batches,
                                   partners, self.device)
        else:
            loader = train_loader(self.train_paths, self.augment, epoch, batches, cfg.data.workers, self.device,
                                  partners=partners)
        pseudo = torch.as_tensor(labels.labels, device=self.device)
        irre = labels.irrelevant.to(self.device) if labels.irrelevant is not None else None
        self.train_model.train()
        total = progress.steps + len(batches)
        totals = LossTotals(progress.sums, self.device, cfg.train.print_freq)
        with self.callbacks.stage(f"train {epoch + 1}/{cfg.train.epochs}", total) as bar, self.signals.deferred(), \
                checked(loader) as loaded:
            bar.advance(progress.steps)
            for images, partners, idx in loaded:
                totals.add(self.step(memory, images, partners, idx, pseudo, irre), progress.steps)
                self.iteration += 1
                progress.steps += 1
                bar.advance(1)
                # one read of the device per refresh (issue 22): the loss sums, a NaN, and under torchrun
                # whether some rank asked to stop; a lone process stops after the step a signal came in
                lone_stop = self.signals.stop and not self.dist.active
                if progress.steps % cfg.train.print_freq == 0 or progress.steps == total or lone_stop:
                    if self._refresh(progress, totals, bar) or lone_stop:
                        raise StepInterrupted   # between steps: the state is whole (step.StepInterrupted)
        return self.dist.average({k: v / max(1, progress.steps) for k, v in progress.sums.items()})

    def _refresh(self, progress: EpochProgress, totals: LossTotals, bar: Any) -> bool:
        """Read the loss sums (once), stop on a NaN, report the running means; whether to stop here."""
        sums, first_bad, stop = totals.read(self.dist, self.signals.stop, progress.steps)
        if first_bad is not None:
            raise TrainingDiverged(f"the loss became {sums['loss']} at step {first_bad + 1} of the epoch")
        progress.sums = sums
        means = {k: sums[k] / progress.steps for k in STEP_KEYS}
        bar.advance(0, status=loss_status(means))
        self.callbacks.on_step_end(self, progress.epoch, progress.steps, means)
        return stop

    def _decoded_train_images(self) -> ImageCache:
        """The train split decoded once per run, kept on the training device (--augment-on device)."""
        if self._train_images is None:
            c = self.cfg.data
            with self.callbacks.stage("decode train images", len(self.train_paths)) as bar:
                cache = decode_images(self.train_paths, c.height, c.width, workers=c.workers, advance=bar.advance)
            self._train_images = cache.to(self.device)
            self.callbacks.message(f"train images decoded once into {cache.nbytes / 2**20:.0f} MB on "
                                   f"{self.device.type}; batches are augmented there (--augment-on)")
        return self._train_images

    # ----- checkpoints ------------------------------------------------------------------------
    def checkpoint_payload(self, metrics: dict[str, Any], interrupted: bool = False) -> dict[str, Any]:
        """The run's state through the one checkpoint builder (weights, optimizer, scheduler, RNG, config);
        an interrupted run adds its epoch in progress or its pending evaluation (resume.py)."""
        from dsgl_cli.models.checkpoint import capture_rng_state, make_checkpoint

        extra: dict[str, Any] = {"config": config_to_dict(self.cfg), "iteration": self.iteration}
        if self.previous_labels is not None:   # the next epoch's agreement figures compare with these
            extra[PREVIOUS_LABELS] = torch.from_numpy(self.previous_labels.astype(np.int64))
        if interrupted:
            extra.update(resume_state(self.progress, self.pending))
        return make_checkpoint(
            self.model, epoch=self.epochs_done, height=self.cfg.data.height, width=self.cfg.data.width,  # type: ignore[arg-type]
            metrics=metrics, best_mAP=self.best_map, optimizer=self.optimizer, scheduler=self.scheduler,
            rng=capture_rng_state(), extra=extra)

    def resume(self, path: Path, ckpt: Optional[dict[str, Any]] = None) -> None:
        """Continue after the last completed epoch with optimizer, scheduler and RNG state."""
        from dsgl_cli.models.checkpoint import load_checkpoint, restore_rng_state

        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        if ckpt.get("format") != "dsgl":
            self._resume_authors(Path(path), ckpt)
            return
        if "optimizer" not in ckpt:
            raise DsglError(f"--resume {path}: not a resumable dsgl checkpoint (it has no optimizer state)")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise DsglError(f"--resume {path}: the checkpoint does not fit this model "
                            f"({str(exc).splitlines()[0]}); resume with the run's own settings") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])
        self.start_epoch = self.epochs_done = int(ckpt["epoch"])
        self.best_map = float(ckpt.get("best_mAP", -1.0))
        self.checkpoint_path, self.fresh = Path(path), False
        extra = ckpt.get("extra") or {}
        self.iteration = int(extra.get("iteration", 0))
        if extra.get(PREVIOUS_LABELS) is not None:
            self.previous_labels = extra[PREVIOUS_LABELS].numpy()
        where = f"after epoch {self.start_epoch}"
        if PROGRESS_KEY in extra:
            self.progress = EpochProgress.from_state(extra[PROGRESS_KEY], self.memory_type, self.device)
            where = f"in epoch {self.progress.epoch + 1}, after step {self.progress.steps}"
            self.previous_labels = np.asarray(self.progress.labels.labels)
        elif PENDING_KEY in extra:
            self.pending = record_from(extra[PENDING_KEY])
            where = f"after epoch {self.start_epoch}, before its evaluation"
        self.callbacks.message(f"Resuming from {path} {where}")

    def _resume_authors(self, path: Path, ckpt: dict[str, Any]) -> None:
        """The reference's --resume: weights and epoch count; optimizer, schedule, best mAP afresh (method.md 7)."""
        from dsgl_cli.models.serialization import strip_prefix

        state = {k: v for k, v in strip_prefix(ckpt["state_dict"]).items() if not k.startswith("classifier.")}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise DsglError(f"--resume {path}: the checkpoint does not fit {self.cfg.model.arch} "
                            f"({str(exc).splitlines()[0]}); pass the -a/--arch, --features and --pooling-type it "
                            f"was trained with") from None
        if "epoch" not in ckpt:
            raise DsglError(f"--resume {path}: the checkpoint records no epoch; nothing to continue from")
        self.start_epoch = self.epochs_done = int(ckpt["epoch"])
        self.fresh = False
        self.callbacks.message(
            f"Resuming the authors' checkpoint {path} after epoch {self.start_epoch}: weights and epoch loaded; the "
            f"optimizer, the learning-rate schedule and the best mAP start afresh, as the reference's --resume does")
