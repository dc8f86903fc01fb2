"""One DSGL optimisation step (method.md 5): forward, L_m + L_dis + L_kl, backward, Adam, memory update."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Protocol

import torch
from torch import Tensor, nn

from dsgl_cli.errors import RaisedOnEveryRank
from dsgl_cli.features import autocast_context
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
                 device: torch.device, dist: "Distributed", amp: bool, use_partner: bool) -> None:
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.device, self.dist, self.use_partner = device, dist, use_partner
        self.amp = amp and device.type == "cuda"
        self.scaler: Optional[Any] = None
        if self.amp and not torch.cuda.is_bf16_supported():   # fp16 needs loss scaling, bf16 does not
            self.scaler = torch.amp.GradScaler("cuda")

    def _to_device(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def __call__(self, memory: Memory, images: Tensor, partners: Tensor, idx: Tensor, pseudo: Tensor,
                 irre: Optional[Tensor], stop_requested: bool = False) -> dict[str, float]:
        """The losses of this step (floats, before the update), after backward, Adam and the memory update."""
        idx = idx.to(self.device, non_blocking=True)
        images = self._to_device(images)
        with autocast_context(self.device, self.amp):
            f = self.train_model(images)
            # The partner goes through the bare module: its gradient still reaches the shared
            # parameters before DDP's all-reduce hooks fire (one backward).
            f_hat = self.model(self._to_device(partners)) if self.use_partner else None
        f = f.float()
        f_hat = f_hat.float() if f_hat is not None else None
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
        if self.scaler is not None:
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
        values = {k: float(v.detach()) for k, v in parts.items()}
        values["loss"] = float(loss.detach())
        return values
