"""One DSGL optimisation step (method.md 5): forward, L_m + L_dis + L_kl, backward, Adam, memory update.

Nothing in a step waits for the host (issue 22): the losses come back as a device tensor that the
trainer adds up and reads once per progress refresh, where it also checks them for NaN; the batch
plan and the memory update are fixed-shape tensor code (`method/`). Anchors and partners go
through the backbone as one batch of 2B images (`batch_norm.py` keeps the reference's separate
BatchNorm statistics).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import torch
from torch import Tensor, nn

from dsgl_cli.errors import RaisedOnEveryRank
from dsgl_cli.features import autocast_context, precision_of, to_model_layout
from dsgl_cli.training.batch_norm import grouped, joint_groups, set_groups
from dsgl_cli.training.compiled import Compiled
from dsgl_cli.training.records import LOSS_KEYS

if TYPE_CHECKING:
    from dsgl_cli.training.distributed import Distributed

#: what a step returns, in this order: the three losses of method.md 5 and their total
STEP_KEYS = (*LOSS_KEYS, "loss")


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


def _losses(memory: Memory, f: Tensor, idx: Tensor, targets: Tensor, irre: Optional[Tensor],
            f_hat: Optional[Tensor]) -> dict[str, Tensor]:
    return memory.losses(f, idx, targets, irre, f_hat)


def _update(memory: Memory, f: Tensor, idx: Tensor, targets: Tensor) -> None:
    memory.update(f, idx, targets)


def adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (method.md 5.4), fused into a few kernels where this torch and device have it.

    Fused Adam is the same update as the per-parameter loop up to float rounding; it launches a
    handful of kernels for all parameters instead of about ten per parameter, and reads no step
    count back to the host.
    """
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):   # an older torch or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


class TrainStep:
    """Runs one step; holds what does not change between steps (model, optimizer, precision)."""

    def __init__(self, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, dist: "Distributed", amp: bool, use_partner: bool,
                 channels_last: bool = False, bn_groups: int = 1, joint: bool = True, compile: bool = False,
                 notify: Optional[Callable[[str], None]] = None) -> None:
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        # joint: anchors and partners in one forward; SyncBatchNorm (--sync-bn) normalises whatever one
        # forward holds across ranks, so there the partners keep a forward of their own
        self.joint = joint
        self.bn_groups = bn_groups   # of this process's share of the batch (method.md 3.1)
        self.device, self.dist, self.use_partner = device, dist, use_partner
        self.amp, self.channels_last = amp, channels_last
        self.precision = precision_of(device, amp)
        self.scaler: Optional[Any] = None
        if self.precision == "fp16":   # fp16 needs loss scaling, bf16 does not
            self.scaler = torch.amp.GradScaler("cuda")
        set_groups(model, *joint_groups(1, use_partner))
        # the model and the DSGL step, compiled (--compile); each falls back to eager on its own
        self._forward = Compiled(train_model, "the model", compile, notify)
        self._losses = Compiled(_losses, "the DSGL losses", compile, notify)
        self._update = Compiled(_update, "the memory update", compile, notify)

    def _encode(self, images: Tensor, partners: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(anchor features, partner features) per BatchNorm group of this process.

        One group: one forward of [anchors; partners]. Several (--bn-groups G in one process): one
        forward of [anchors_g; partners_g] per group, the first keeping the running statistics, which
        is what each of G processes computes, so the one-process run is the G-process run bit for bit
        (one forward over all G groups would sum the weight gradients in another order).
        """
        if not self.joint:
            anchors = self._forward(to_model_layout(images, self.device, self.channels_last))
            if not self.use_partner:
                return [anchors], []
            return [anchors], [self.model(to_model_layout(partners, self.device, self.channels_last))]
        n = images.shape[0] // self.bn_groups
        a_chunks, p_chunks = images.chunk(self.bn_groups), partners.chunk(self.bn_groups) if self.use_partner else []
        f_chunks, f_hat_chunks = [], []
        for g in range(self.bn_groups):
            x = torch.cat([a_chunks[g], p_chunks[g]]) if self.use_partner else a_chunks[g]
            x = to_model_layout(x, self.device, self.channels_last)
            if g == 0:
                out = self._forward(x)
            else:
                groups, _ = joint_groups(1, self.use_partner)
                with grouped(self.model, groups, ()):
                    out = self.model(x)
            f_chunks.append(out[:n])
            if self.use_partner:
                f_hat_chunks.append(out[n:])
        return f_chunks, f_hat_chunks

    def _backward_by_group(self, loss: Tensor, f_chunks: list[Tensor], f_hat_chunks: list[Tensor]) -> None:
        """The loss's gradient to every group's features first, then one backbone backward per group.

        Each parameter's gradient then adds up group by group, in the order two processes all-reduce
        their per-rank gradients: a one-process --bn-groups 2 run is the two-process run bit for bit.
        """
        chunks = [*f_chunks, *f_hat_chunks]
        grads = torch.autograd.grad(loss, chunks)
        groups = len(f_chunks)
        for g in range(groups):
            outputs = [f_chunks[g]] + ([f_hat_chunks[g]] if f_hat_chunks else [])
            upstream = [grads[g]] + ([grads[groups + g]] if f_hat_chunks else [])
            torch.autograd.backward(outputs, upstream)

    def __call__(self, memory: Memory, images: Tensor, partners: Tensor, idx: Tensor, pseudo: Tensor,
                 irre: Optional[Tensor]) -> Tensor:
        """The losses of this step before the update, as a device tensor in `STEP_KEYS` order, after
        backward, Adam and the memory update. Nothing here reads a value back to the host.

        Under torchrun each rank encodes its share of the global batch; the losses and the memory see
        the batch gathered from all ranks (method.md 3.1), computed identically on every rank.
        """
        idx = idx.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp):
            f_chunks, f_hat_chunks = self._encode(images.to(self.device, non_blocking=True),
                                                  partners.to(self.device, non_blocking=True))
        f = self.dist.gather_for_loss(torch.cat(f_chunks).float())
        f_hat = self.dist.gather_for_loss(torch.cat(f_hat_chunks).float()) if f_hat_chunks else None
        (idx,) = self.dist.gather_rows(idx)
        targets = pseudo[idx]
        out = self._losses(memory, f, idx, targets, irre[idx] if irre is not None else None, f_hat)
        parts = [out[k] if k in out else torch.zeros((), device=f.device) for k in LOSS_KEYS]
        loss = parts[0] + parts[1] + parts[2]            # the total of method.md 5
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
            self._update(memory, f.detach(), idx, targets)
        return torch.stack([*parts, loss]).detach()


class LossTotals:
    """The epoch's loss sums and the last steps' totals, kept on the device and read by the host
    once per progress refresh (a read is a sync on a GPU; adding is not). The window of totals says
    which step diverged when a refresh finds a NaN."""

    def __init__(self, sums: dict[str, float], device: torch.device, window: int) -> None:
        self.total = torch.tensor([float(sums.get(k, 0.0)) for k in STEP_KEYS], dtype=torch.float64, device=device)
        self.recent = torch.zeros(window, device=device)
        self.window = window

    def add(self, values: Tensor, step: int) -> None:
        """A step's `STEP_KEYS` values; `step` counts from 0 within the epoch."""
        self.total.add_(values)
        self.recent[step % self.window].copy_(values[-1])

    def read(self, dist: "Distributed", stop_requested: bool, steps: int
             ) -> tuple[dict[str, float], Optional[int], bool]:
        """(sums, the first non-finite step since the last read or None, whether any rank asked to stop):
        one transfer. `steps` is the count of steps done.

        Under torchrun the sums are averaged over ranks and a stop anywhere stops every rank after the
        same step (never one rank left in a collective); a NaN on any rank is a NaN everywhere.
        """
        packed = torch.cat([self.total, self.recent.double(),
                            torch.full((1,), float(stop_requested), dtype=torch.float64, device=self.total.device)])
        values, stop = dist.refresh_status(packed)
        k = len(STEP_KEYS)
        sums = dict(zip(STEP_KEYS, values[:k]))
        if all(math.isfinite(v) for v in sums.values()):
            return sums, None, stop
        recent = values[k : k + self.window]
        since = max(0, steps - self.window)
        bad = [s for s in range(since, steps) if not math.isfinite(recent[s % self.window])]
        return sums, (bad[0] if bad else since), stop
