"""How long a run will take on this device, said before it starts (`dsgl train`).

Why measure instead of a table: the same settings take minutes on a GPU and days on a laptop CPU,
and nobody should learn that from the ETA of the first epoch. The model is timed for real: one
training step (forward and backward of the step's anchors and partners) and one extraction batch
(forward only), at the run's input size, on a copy of the model (its weights, BatchNorm statistics
and the random state stay as they were, so a seeded run is unchanged), with the Adam update that
follows (for ResNet-18 at 64x32 it took a third as long as forward and backward, measured on the 2-core
VM). On a CPU the timed batch is
cut to about 8 images of 256x128 (time scales with the pixels there), so even ResNet-50 costs a few
seconds. The total is the steps, the extraction of the train split each epoch and the evaluations;
clustering and data loading are left out (a few seconds per epoch at the demo's size), so it is a
lower bound on a loaded machine.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dsgl_cli.console import counted

#: pixels timed at once on a CPU: 8 images of 256x128
CPU_PIXELS = 8 * 256 * 128
#: a first pass this long is timed as it is (no second pass): its allocations are small next to it
ONE_PASS_ENOUGH_S = 2.0
#: an estimate this long on a CPU gets the hint of the small preset
LONG_ON_CPU_S = 3600.0


@dataclass(frozen=True)
class DurationEstimate:
    """A run's duration from timed passes: steps, extraction each epoch, evaluations (module doc)."""

    seconds_step: float       # one optimisation step of the whole batch
    seconds_image: float      # one image's forward pass in eval mode (extraction, evaluation)
    steps: int                # per epoch
    epochs: int               # still to train
    train_images: int         # extracted each epoch
    eval_images: int          # query + gallery, 0 without labels
    evaluations: int

    @property
    def seconds(self) -> float:
        return (self.epochs * (self.steps * self.seconds_step + self.train_images * self.seconds_image)
                + self.evaluations * self.eval_images * self.seconds_image)

    def line(self, device: str) -> str:
        """'estimated duration on cpu: about 5 min (16 epochs x 30 steps of 0.41 s, ...)'."""
        parts = [f"{counted(self.epochs, 'epoch')} x {counted(self.steps, 'step')} of {_short(self.seconds_step)}",
                 f"{counted(self.train_images, 'image')} extracted per epoch at "
                 f"{self.seconds_image * 1000:.1f} ms each"]
        if self.evaluations and self.eval_images:
            parts.append(f"{counted(self.evaluations, 'evaluation')} of {self.eval_images:,} images")
        return (f"estimated duration on {device}: about {format_long(self.seconds)} ({', '.join(parts)}; "
                "clustering and data loading not counted)")


def _short(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def format_long(seconds: float) -> str:
    """'40 s', '4 min', '2 h 05 min', '3.5 days': coarse, as an estimate deserves."""
    from dsgl_cli.console import format_eta

    return format_eta(seconds) if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def evaluations_due(epochs: int, eval_step: int, first: int = 0) -> int:
    """How many evaluations a run from epoch ``first`` makes: before training (a fresh run), every
    ``eval_step`` epochs and at the last (callbacks.Evaluation.due)."""
    due = {e for e in range(first + 1, epochs + 1) if e % eval_step == 0 or e == epochs}
    return len(due) + (1 if first == 0 else 0)


def time_passes(model: nn.Module, images: int, height: int, width: int, device: torch.device,
                clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """(seconds of one forward + backward + Adam update for ``images`` images, seconds of one image's eval
    forward), timed on a copy of ``model`` after one warm-up pass, the random state restored afterwards."""
    sync: Callable[[], Any] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timed = images if device.type == "cuda" else max(2, min(images, math.ceil(CPU_PIXELS / (height * width))))
    twin = copy.deepcopy(model).to(device)
    adam = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=1e-12)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        x = torch.randn(timed, 3, height, width, device=device)
        twin.train()
        seconds = 0.0
        for _ in range(2):   # the first pass allocates and picks kernels: the second is timed, unless the first
            sync()           # took long enough (a big model on a CPU) for that to be lost in it
            t0 = clock()
            twin(x).float().pow(2).mean().backward()
            adam.step()
            sync()
            seconds = clock() - t0
            adam.zero_grad(set_to_none=True)
            if seconds > ONE_PASS_ENOUGH_S:
                break
        twin.eval()
        with torch.no_grad():
            sync()
            t0 = clock()
            twin(x)
            sync()
            forward = clock() - t0
    del twin, adam, x
    if device.type == "cuda":
        torch.cuda.empty_cache()   # the copy's memory goes back before the run allocates its own
    return seconds * images / timed, forward / timed


def estimate_duration(model: nn.Module, cfg: Any, device: torch.device, train_images: int, eval_images: int,
                      epochs_done: int = 0) -> DurationEstimate:
    """The run's estimate from a timed step and a timed extraction batch of ``model`` (module doc)."""
    t = cfg.train
    per_step = t.batch_size * (2 if t.memorybank == "DLhybrid" else 1)   # anchors and their partners
    seconds_step, seconds_image = time_passes(model, per_step, cfg.data.height, cfg.data.width, device)
    steps = t.iters if t.iters > 0 else max(1, train_images // t.batch_size)
    evaluations = evaluations_due(t.epochs, t.eval_step, epochs_done) if eval_images else 0
    return DurationEstimate(seconds_step, seconds_image, steps, max(0, t.epochs - epochs_done), train_images,
                            eval_images, evaluations)
