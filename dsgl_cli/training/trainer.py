"""The DSGL training loop: cluster -> train ``iters`` steps -> evaluate -> checkpoint, per epoch.

Lifecycle (one method each, so every step is visible): ``before_epoch`` (extract features,
cluster, build the memories), ``train_epoch`` (forward, L_m + L_dis + L_kl, backward, Adam step,
then the explicit memory update), ``after_epoch`` (evaluate, checkpoint, metrics row, curves).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dsgl_cli.config import RunConfig, config_to_dict
from dsgl_cli.console import console, info, stage, warn
from dsgl_cli.data.datasets import ReIDDataset
from dsgl_cli.data.loaders import train_loader
from dsgl_cli.data.sampler import IterationBatchSampler, PseudoIdentitySampler
from dsgl_cli.data.transforms import test_transform, train_transform
from dsgl_cli.training.curves import draw_curves
from dsgl_cli.evaluation.retrieval import evaluate_model
from dsgl_cli.features import autocast_context, extract_features
from dsgl_cli.clustering.pseudo_labels import EpochLabels, make_pseudo_labels
from dsgl_cli.training.run_dir import RunDir
from dsgl_cli.errors import DsglError

LOSS_KEYS = ("loss_m", "loss_dis", "loss_kl")


class TrainingDiverged(DsglError):
    """A NaN or infinite loss: the run stops and the last good checkpoint stays."""


@dataclass
class EpochStats:
    """What one epoch measured, for the metrics row."""

    labels: Optional[EpochLabels] = None
    losses: dict[str, float] = field(default_factory=dict)
    seconds_cluster: float = 0.0
    seconds_train: float = 0.0


def build_optimizer(model: nn.Module, cfg: RunConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam on trainable parameters (the neck's frozen bias stays out) and a per-epoch StepLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.train.step_size, gamma=0.1)
    return optimizer, scheduler


class Trainer:
    """Runs DSGL on one data set; library code, it never parses flags."""

    def __init__(self, cfg: RunConfig, dataset: ReIDDataset, model: nn.Module, device: torch.device,
                 run_dir: RunDir, dist: Optional["Distributed"] = None, sync_bn: bool = False) -> None:
        from dsgl_cli.training.distributed import Distributed

        self.cfg = cfg
        self.dataset = dataset
        self.model = model
        self.device = device
        self.run_dir = run_dir
        self.dist = dist or Distributed.single()
        self.optimizer, self.scheduler = build_optimizer(model, cfg)
        self.start_epoch = 0
        self.best_map = -1.0
        self.train_paths = [r.path for r in dataset.train]
        self.train_cams = np.array([r.camid for r in dataset.train])
        self.train_ids = np.array([r.pid for r in dataset.train])  # diagnostics only, never trained on
        self.amp = cfg.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and not torch.cuda.is_bf16_supported()) \
            if device.type == "cuda" else None
        self.iteration = 0
        self.epoch = 0
        self.train_model = self.dist.wrap(model, device, sync_bn=sync_bn)

    # ----- checkpoints -------------------------------------------------------------------
    def _payload(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        from dsgl_cli.models.checkpoint import capture_rng_state

        spec = self.model.spec.as_dict()
        spec.update(height=self.cfg.data.height, width=self.cfg.data.width)
        return {
            "format": "dsgl", "format_version": 1, "state_dict": self.model.state_dict(), "model": spec,
            "epoch": epoch, "metrics": metrics, "best_mAP": self.best_map,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(), "extra": {"config": config_to_dict(self.cfg)},
        }

    def save(self, epoch: int, metrics: dict[str, Any], best: bool = False) -> None:
        """Atomic last (and best) checkpoint; only rank 0 writes."""
        from dsgl_cli.models.checkpoint import save_checkpoint

        if not self.dist.is_main:
            return
        payload = self._payload(epoch, metrics)
        save_checkpoint(self.run_dir.checkpoint, payload)
        if best:
            save_checkpoint(self.run_dir.best, payload)

    def resume(self, path, ckpt: Optional[dict[str, Any]] = None) -> None:
        """Continue after the last completed epoch with optimizer, scheduler and RNG state."""
        from dsgl_cli.models.checkpoint import load_checkpoint, restore_rng_state

        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        if ckpt.get("format") != "dsgl" or "optimizer" not in ckpt:
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
        self.start_epoch = int(ckpt["epoch"])
        self.best_map = float(ckpt.get("best_mAP", -1.0))
        self.run_dir.truncate_metrics(self.start_epoch)
        info(f"Resuming from {path} after epoch {self.start_epoch}")

    # ----- lifecycle ---------------------------------------------------------------------
    def extract_train_features(self) -> torch.Tensor:
        transform = test_transform(self.cfg.data.height, self.cfg.data.width)
        with stage("extract", total=len(self.train_paths)) as bar:
            return self.dist.extract(self.train_paths, lambda paths: extract_features(
                self.model, paths, transform, self.device, batch_size=128, workers=self.cfg.data.workers,
                amp=self.cfg.train.amp, advance=bar.advance))

    def _cluster(self, features: torch.Tensor):
        """Pseudo labels, or the error to raise on every rank (so no rank waits forever)."""
        try:
            return make_pseudo_labels(
                features, eps=self.cfg.cluster.eps, k1=self.cfg.cluster.k1, k2=self.cfg.cluster.k2,
                min_samples=self.cfg.cluster.min_samples, temp=self.cfg.train.temp,
                with_irrelevant=self.cfg.train.memorybank == "DLhybrid", true_ids=self.train_ids)
        except DsglError as exc:
            if not self.dist.active:
                raise
            return exc

    def before_epoch(self, epoch: int):
        """Pseudo labels and fresh memories for this epoch (method.md section 4)."""
        from dsgl_cli.method.memory import DSGLMemory

        features = self.extract_train_features()
        with stage("cluster", total=None):
            labels = self.dist.run_on_main(lambda: self._cluster(features))
        labels = self.dist.broadcast_object(labels)
        if isinstance(labels, DsglError):
            raise labels
        with self.dist.identical_memories(self.device):   # bitwise the same on every rank under DDP
            memory = DSGLMemory(features, torch.as_tensor(labels.labels, device=self.device), labels.irrelevant,
                                labels.centroids, mode=self.cfg.train.memorybank, temp=self.cfg.train.temp,
                                momentum=self.cfg.train.momentum)
        q = labels.quality
        info(f"epoch {epoch + 1}: {labels.num_clusters} clusters, {labels.num_outliers} outliers"
             + (f", pseudo-label precision {q['precision']:.3f} recall {q['recall']:.3f} ARI {q['ari']:.3f}"
                if q else "") + f" ({labels.seconds:.1f}s)")
        return labels, memory

    def train_epoch(self, epoch: int, labels: EpochLabels, memory) -> dict[str, float]:
        """``iters`` steps: loss, backward, Adam step, then the explicit memory update."""
        cfg = self.cfg
        sampler = PseudoIdentitySampler(labels.labels, self.train_cams, cfg.train.num_instances)
        local_batch = self.dist.local_batch(cfg.train.batch_size)
        batches = IterationBatchSampler(sampler, local_batch, cfg.train.iters,
                                        seed=cfg.train.seed * 100003 + epoch * 1009 + self.dist.rank)
        loader = train_loader(self.train_paths, train_transform(cfg.data.height, cfg.data.width), batches,
                              cfg.data.workers, self.device)
        pseudo = torch.as_tensor(labels.labels, device=self.device)
        irre = labels.irrelevant.to(self.device) if labels.irrelevant is not None else None
        use_partner = cfg.train.memorybank == "DLhybrid"
        sums = {k: 0.0 for k in (*LOSS_KEYS, "loss")}
        self.train_model.train()
        with stage(f"train {epoch + 1}/{cfg.train.epochs}", total=cfg.train.iters) as bar:
            for step, (images, partners, idx) in enumerate(loader):
                idx = idx.to(self.device, non_blocking=True)
                images = self._to_device(images)
                with autocast_context(self.device, self.amp):
                    f = self.train_model(images)
                    # The partner goes through the bare module: its gradient still reaches the
                    # shared parameters before DDP's all-reduce hooks fire (one backward).
                    f_hat = self.model(self._to_device(partners)) if use_partner else None
                f = f.float()
                f_hat = f_hat.float() if f_hat is not None else None
                targets = pseudo[idx]
                out = memory.losses(f, idx, targets, irre[idx] if irre is not None else None, f_hat)
                parts = {k: out[k] for k in LOSS_KEYS if k in out}   # the total of method.md 5
                loss = parts["loss_m"] + parts.get("loss_dis", 0.0) + parts.get("loss_kl", 0.0)
                # under torchrun: the loss averaged over ranks and a shared Ctrl-C flag, so every
                # rank stops at the same step (never one rank left in a collective)
                loss_value, interrupted = self.dist.step_status(loss)
                if interrupted:
                    raise KeyboardInterrupt
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; the run stopped "
                        f"and the last good checkpoint is kept in {self.run_dir.checkpoint}; try a lower --lr"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None and self.scaler.is_enabled():
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.optimizer.step()
                # Explicit state change after the step; every rank applies the gathered batch.
                g_f, g_idx = self.dist.gather_rows(f.detach(), idx)
                with self.dist.identical_memories(self.device):
                    memory.update(g_f, g_idx, pseudo[g_idx])
                self.iteration += 1
                for key, value in parts.items():
                    sums[key] += float(value.detach())
                sums["loss"] += float(loss.detach())
                n = step + 1
                status = " ".join(f"{k.removeprefix('loss_')} {sums[k] / n:.3f}" for k in LOSS_KEYS
                                  if k in parts)
                bar.advance(1, status=status)
                if n % cfg.train.print_freq == 0:
                    self.run_dir.log(f"epoch {epoch + 1} step {n}/{cfg.train.iters} loss {sums['loss'] / n:.4f} "
                                     + status)
        steps = max(1, cfg.train.iters)
        return self.dist.average({k: v / steps for k, v in sums.items()})   # over ranks under torchrun

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def evaluate(self) -> dict[str, float]:
        """mAP / CMC / mINP on query vs gallery with the current model."""
        total = len(self.dataset.query) + len(self.dataset.gallery)
        with stage("evaluate", total=total) as bar:
            result = evaluate_model(self.model, self.dataset.query, self.dataset.gallery, self.cfg.data.height,
                                    self.cfg.data.width, self.device, workers=self.cfg.data.workers,
                                    flip=self.cfg.train.flip, amp=self.cfg.train.amp, advance=bar.advance)
        return result.metrics

    def after_epoch(self, epoch: int, stats: EpochStats) -> None:
        """Evaluate when due, write checkpoint and a metrics row, redraw the curves."""
        done = epoch + 1
        row: dict[str, Any] = {"epoch": done}
        due = done % self.cfg.train.eval_step == 0 or done == self.cfg.train.epochs
        t0 = time.perf_counter()
        if due and self.dist.is_main:
            row.update(self.evaluate())
        seconds_eval = time.perf_counter() - t0
        self.dist.barrier()
        best = due and row.get("mAP", -1.0) > self.best_map
        if best:
            self.best_map = row["mAP"]
        if stats.labels is not None:
            q = stats.labels.quality
            row.update(num_clusters=stats.labels.num_clusters, num_outliers=stats.labels.num_outliers,
                       precision=q.get("precision"), recall=q.get("recall"), ari=q.get("ari"))
        row.update(stats.losses)
        row.update(lr=self.optimizer.param_groups[0]["lr"], seconds_cluster=round(stats.seconds_cluster, 3),
                   seconds_train=round(stats.seconds_train, 3), seconds_eval=round(seconds_eval, 3))
        self.save(done, row, best=best)
        if due and self.dist.is_main:
            self.run_dir.append_metrics(row)
            self.run_dir.log(f"epoch {done}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            draw_curves(self.run_dir.read_metrics(), self.run_dir.path / "training_curves.png")
            console.print(f"epoch {done}/{self.cfg.train.epochs}: mAP {row['mAP']:.1%}  rank-1 {row['rank1']:.1%}"
                          f"  (best mAP {self.best_map:.1%})" + ("  [green]new best[/green]" if best else ""))

    def evaluate_initial(self) -> None:
        """Row ``epoch 0``: the model before any training, the baseline of the curves."""
        if not self.dist.is_main:
            self.dist.barrier()
            return
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": 0, **self.evaluate()}
        row["seconds_eval"] = round(time.perf_counter() - t0, 3)
        self.run_dir.append_metrics(row)
        self.run_dir.log(f"epoch 0 (initial model): mAP {row['mAP']:.4f} rank1 {row['rank1']:.4f}")
        console.print(f"initial model: mAP {row['mAP']:.1%}  rank-1 {row['rank1']:.1%}")
        self.dist.barrier()

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch; Ctrl-C saves a resumable checkpoint, a NaN keeps the last good one."""
        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.write_config(config_to_dict(cfg))
        if self.start_epoch == 0:
            if self.dist.is_main:
                self.run_dir.truncate_metrics(-1)   # a fresh run in a folder a failed run left behind
            self.evaluate_initial()
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                self.epoch = epoch
                stats = EpochStats()
                t0 = time.perf_counter()
                stats.labels, memory = self.before_epoch(epoch)
                stats.seconds_cluster = time.perf_counter() - t0
                t0 = time.perf_counter()
                with self.dist.deferred_interrupt():
                    stats.losses = self.train_epoch(epoch, stats.labels, memory)
                stats.seconds_train = time.perf_counter() - t0
                self.scheduler.step()
                self.after_epoch(epoch, stats)
        except KeyboardInterrupt:
            # Keep the weights trained so far; ``epoch`` counts completed epochs, so a resumed
            # run re-clusters and redoes the interrupted epoch from these weights.
            self.save(epoch, {"interrupted": True, "iteration": self.iteration})
            warn(f"interrupted: resumable checkpoint written to {self.run_dir.checkpoint}; "
                 f"continue with: dsgl train --resume {self.run_dir.checkpoint}")
            raise DsglError("training interrupted", exit_code=130) from None
        rows = self.run_dir.read_metrics()
        return {"best_mAP": self.best_map, "rows": rows, "run_dir": str(self.run_dir.path)}
