"""The hooks a training run calls (`Callback`), their composite, and the progress bars they share.

Kept apart from the concrete callbacks (`callbacks.py`, `console_report.py`) so that the trainer
imports the hooks and nothing that imports the trainer back: the trainer is typed loosely here
(`Run`), and the concrete callbacks type it fully.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Optional, Protocol, Sequence

from dsgl_cli.training.records import LOSS_KEYS, EpochRecord, TrainResult

if TYPE_CHECKING:
    from dsgl_cli.clustering.pseudo_labels import EpochLabels

#: the trainer a hook is called with (`trainer.Trainer`); `Any` here, as the trainer imports this module
Run = Any


class Progress(Protocol):
    """A progress display the trainer advances (a Rich bar, or nothing)."""

    def advance(self, n: int = 1, status: Optional[str] = None) -> None: ...


class Callback:
    """Hooks of a training run; every one is optional."""

    #: whether this callback measures mAP; without one, the best checkpoint is the last epoch's
    evaluates: bool = False

    def on_fit_start(self, trainer: Run) -> None:
        """Before the first epoch (also when resuming)."""

    def on_clustered(self, trainer: Run, epoch: int, labels: "EpochLabels") -> None:
        """After the epoch's pseudo labels are made (``epoch`` counts from 0)."""

    def on_step_end(self, trainer: Run, epoch: int, step: int, means: dict[str, float]) -> None:
        """After optimisation step ``step`` (from 1) with the epoch's running mean losses."""

    def on_epoch_end(self, trainer: Run, record: EpochRecord) -> None:
        """After an epoch's training, and once with record 0 for the model before training."""

    def on_interrupt(self, trainer: Run) -> None:
        """Ctrl-C or SIGTERM stopped the run; the resumable state is the trainer's current one."""

    def on_fit_end(self, trainer: Run, result: TrainResult) -> None:
        """After the last epoch."""

    def message(self, text: str) -> None:
        """A line of information from the trainer (the epoch's clustering, a resume)."""

    def stage(self, name: str, total: Optional[int]) -> ContextManager[Optional[Progress]]:
        """A progress display for one stage (extract, cluster, train, evaluate)."""
        return nullcontext(None)


class Callbacks(Callback):
    """The hooks of several callbacks, called in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def on_fit_start(self, trainer: Run) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(trainer)

    def on_clustered(self, trainer: Run, epoch: int, labels: "EpochLabels") -> None:
        for cb in self.callbacks:
            cb.on_clustered(trainer, epoch, labels)

    def on_step_end(self, trainer: Run, epoch: int, step: int, means: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, epoch, step, means)

    def on_epoch_end(self, trainer: Run, record: EpochRecord) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, record)

    def on_interrupt(self, trainer: Run) -> None:
        for cb in self.callbacks:
            cb.on_interrupt(trainer)

    def on_fit_end(self, trainer: Run, result: TrainResult) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(trainer, result)

    def message(self, text: str) -> None:
        for cb in self.callbacks:
            cb.message(text)

    @contextmanager
    def stage(self, name: str, total: Optional[int]) -> Iterator[Progress]:
        with ExitStack() as stack:
            bars = [b for b in (stack.enter_context(cb.stage(name, total)) for cb in self.callbacks) if b is not None]
            yield _AllBars(bars)


class _AllBars:
    def __init__(self, bars: list[Progress]) -> None:
        self.bars = bars

    def advance(self, n: int = 1, status: Optional[str] = None) -> None:
        for bar in self.bars:
            bar.advance(n, status)


def loss_status(means: dict[str, float]) -> str:
    """'m 1.234 dis 2.345 kl 0.123': the running losses in the progress line and the log."""
    return " ".join(f"{k.removeprefix('loss_')} {means[k]:.3f}" for k in LOSS_KEYS if k in means)
