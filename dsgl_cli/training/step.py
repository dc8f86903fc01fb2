"""One DSGL optimisation step (method.md 5): forward, L_m + L_dis + L_kl, backward, Adam, memory update."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Protocol

import torch
from torch import Tensor, nn

from dsgl_cli.errors import RaisedOnEveryRank
from dsgl_cli.features import autocast_context, precision_of, to_model_layout
from dsgl_cli.training.batch_norm import forward_in_groups
from dsgl_cli.training.records import LOSS_KEYS

if TYPE_CHECKING:
    from dsgl_cli.training.distributed import Distributed


class TrainingDiverged(RaisedOnEveryRank):
    """A NaN or infinite loss: the run stops and the last good checkpoint stays."""


class StepInterrupted(Exception):
    """Some rank asked to stop (Ctrl-C, SIGTERM): raised between steps, never inside one.

    A step stopped after its forward pass would still have moved the BatchNorm running
    statistics, and the resumed run would move them again for the same batch (measured: the
    resumed run's final weights differed from the uninterrupted run's).
    """


class Memory(Protocol):
    """What a step needs of a memory (`method.memory.DSGLMemory`, or a fake one in tests)."""

    def losses(self, f: Tensor, idx: Tensor, targets: Tensor, irre: Optional[Tensor],
               f_hat: Optional[Tensor]) -> dict[str, Tensor]: ...

    def update(self, f: Tensor, idx: Tensor, targets: Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class TrainStep:
    """Runs one step; holds what does not change between steps (model, optimizer, precision)."""

    def __init__(self, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, dist: "Distributed", amp: bool, use_partner: bool,
                 channels_last: bool = False, bn_groups: int = 1) -> None:
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.bn_groups = bn_groups   # of this process's share of the batch (method.md 3.1)
        self.device, self.dist, self.use_partner = device, dist, use_partner
        self.amp, self.channels_last = amp, channels_last
        self.precision = precision_of(device, amp)
        self.stop_agreed = False   # some rank asked to stop by the last step: the trainer stops after it
        self.scaler: Optional[Any] = None
        if self.precision == "fp16":   # fp16 needs loss scaling, bf16 does not
            self.scaler = torch.amp.GradScaler("cuda")

    @staticmethod
    def _backward_by_group(loss: Tensor, f_chunks: list[Tensor], f_hat_chunks: list[Tensor]) -> None:
        """The loss's gradient to every chunk's features first, then one backbone backward per group.

        Each parameter's gradient then adds up group by group, (anchor 0 + partner 0) + (anchor 1 +
        partner 1) + ..., the order in which two processes all-reduce their per-rank gradients: a
        one-process --bn-groups 2 run is the two-process run bit for bit, where one backward's
        arbitrary order would differ by an ulp that the memory's argmin updates can turn into a
        different step.
        """
        chunks = [*f_chunks, *f_hat_chunks]
        grads = torch.autograd.grad(loss, chunks)
        groups = len(f_chunks)
        for g in range(groups):
            outputs = [f_chunks[g]] + ([f_hat_chunks[g]] if f_hat_chunks else [])
            upstream = [grads[g]] + ([grads[groups + g]] if f_hat_chunks else [])
            torch.autograd.backward(outputs, upstream)

    def __call__(self, memory: Memory, images: Tensor, partners: Tensor, idx: Tensor, pseudo: Tensor,
                 irre: Optional[Tensor], stop_requested: bool = False) -> dict[str, float]:
        """The losses of this step (floats, before the update), after backward, Adam and the memory update.

        Under torchrun each rank encodes its share of the global batch; the losses and the memory see
        the batch gathered from all ranks (method.md 3.1), computed identically on every rank.
        """
        idx = idx.to(self.device, non_blocking=True)
        images = to_model_layout(images, self.device, self.channels_last)
        with autocast_context(self.device, self.amp):
            f_chunks = forward_in_groups(self.train_model, self.model, images, self.bn_groups)
            # The partner goes through the bare module: its gradient still reaches the shared
            # parameters before DDP's all-reduce hooks fire (one backward).
            f_hat_chunks = (forward_in_groups(self.model, self.model,
                                              to_model_layout(partners, self.device, self.channels_last),
                                              self.bn_groups) if self.use_partner else [])
        f = self.dist.gather_for_loss(torch.cat(f_chunks).float())
        f_hat = self.dist.gather_for_loss(torch.cat(f_hat_chunks).float()) if f_hat_chunks else None
        (idx,) = self.dist.gather_rows(idx)
        targets = pseudo[idx]
        out = memory.losses(f, idx, targets, irre[idx] if irre is not None else None, f_hat)
        parts = {k: out[k] for k in LOSS_KEYS if k in out}   # the total of method.md 5
        loss = parts["loss_m"] + parts.get("loss_dis", 0.0) + parts.get("loss_kl", 0.0)
        # under torchrun: the loss averaged over ranks and a shared stop flag, so every rank stops after
        # the same step (never one rank left in a collective)
        loss_value, self.stop_agreed = self.dist.step_status(loss, stop_requested)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"the loss became {loss_value}")
        self.optimizer.zero_grad(set_to_none=True)
        scaled = loss * self.dist.loss_scale if self.dist.active else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        if len(f_chunks) > 1 and not self.dist.active:
            self._backward_by_group(scaled, f_chunks, f_hat_chunks)
        else:
            scaled.backward()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # Explicit state change after the step; every rank applies the gathered batch.
        with self.dist.identical_memories(self.device):
            memory.update(f.detach(), idx, targets)
        values = {k: float(v.detach()) for k, v in parts.items()}
        values["loss"] = float(loss.detach())
        return values
