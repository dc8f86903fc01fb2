"""One DSGL optimisation step (method.md 5): forward, L_m + L_dis + L_kl, backward, Adam, memory update."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Protocol

import torch
from torch import Tensor, nn

from dsgl_cli.errors import RaisedOnEveryRank
from dsgl_cli.features import autocast_context, precision_of, to_model_layout
from dsgl_cli.training.records import LOSS_KEYS

if TYPE_CHECKING:
    from dsgl_cli.training.distributed import Distributed


class TrainingDiverged(RaisedOnEveryRank):
    """A NaN or infinite loss: the run stops and the last good checkpoint stays."""


class StepInterrupted(Exception):
    """Some rank asked to stop (Ctrl-C, SIGTERM) before this step changed anything."""


class Memory(Protocol):
    """What a step needs of a memory (`method.memory.DSGLMemory`, or a fake one in tests)."""

    def losses(self, f: Tensor, idx: Tensor, targets: Tensor, irre: Optional[Tensor],
               f_hat: Optional[Tensor]) -> dict[str, Tensor]: ...

    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None: ...


class TrainStep:
    """Runs one step; holds what does not change between steps (model, optimizer, precision)."""

    def __init__(self, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, dist: "Distributed", amp: bool, use_partner: bool,
                 channels_last: bool = False) -> None:
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.device, self.dist, self.use_partner = device, dist, use_partner
        self.amp, self.channels_last = amp, channels_last
        self.precision = precision_of(device, amp)
        self.scaler: Optional[Any] = None
        if self.precision == "fp16":   # fp16 needs loss scaling, bf16 does not
            self.scaler = torch.amp.GradScaler("cuda")

    def __call__(self, memory: Memory, images: Tensor, partners: Tensor, idx: Tensor, pseudo: Tensor,
                 irre: Optional[Tensor], stop_requested: bool = False) -> dict[str, float]:
        """The losses of this step (floats, before the update), after backward, Adam and the memory update.

        Under torchrun each rank encodes its share of the global batch; the losses and the memory see
        the batch gathered from all ranks (method.md 3.1), computed identically on every rank.
        """
        idx = idx.to(self.device, non_blocking=True)
        images = to_model_layout(images, self.device, self.channels_last)
        with autocast_context(self.device, self.amp):
            f_local = self.train_model(images)
            # The partner goes through the bare module: its gradient still reaches the shared
            # parameters before DDP's all-reduce hooks fire (one backward).
            f_hat_local = (self.model(to_model_layout(partners, self.device, self.channels_last))
                           if self.use_partner else None)
        f = self.dist.gather_for_loss(f_local.float())
        f_hat = self.dist.gather_for_loss(f_hat_local.float()) if f_hat_local is not None else None
        (idx,) = self.dist.gather_rows(idx)
        targets = pseudo[idx]
        out = memory.losses(f, idx, targets, irre[idx] if irre is not None else None, f_hat)
        parts = {k: out[k] for k in LOSS_KEYS if k in out}   # the total of method.md 5
        loss = parts["loss_m"] + parts.get("loss_dis", 0.0) + parts.get("loss_kl", 0.0)
        # under torchrun: the loss averaged over ranks and a shared stop flag, so every rank stops at
        # the same step (never one rank left in a collective)
        loss_value, stop = self.dist.step_status(loss, stop_requested)
        if stop:
            raise StepInterrupted
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"the loss became {loss_value}")
        self.optimizer.zero_grad(set_to_none=True)
        scaled = loss * self.dist.loss_scale if self.dist.active else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            scaled.backward()
            self.optimizer.step()
        # Explicit state change after the step; every rank applies the gathered batch.
        with self.dist.identical_memories(self.device):
            memory.update(f.detach(), idx, targets)
        values = {k: float(v.detach()) for k, v in parts.items()}
        values["loss"] = float(loss.detach())
        return values
