"""The trainer in-process with a tiny model and a fake memory: the loop, resume, interrupts, NaN, callbacks."""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsgl_cli.clustering.pseudo_labels import EpochLabels
from dsgl_cli.config import build_config
from dsgl_cli.data.datasets import ImageRecord
from dsgl_cli.errors import RunInterrupted
from dsgl_cli.models.reid import ModelSpec
from dsgl_cli.training.callbacks import Callback, Checkpointing, MetricsLog, TensorBoardLog
from dsgl_cli.training.records import EpochRecord
from dsgl_cli.training.run_dir import RunDir
from dsgl_cli.training.step import TrainingDiverged
from dsgl_cli.training.trainer import Trainer
from tests.helpers import write_image

H, W, N, C = 16, 16, 24, 3


class TinyReID(nn.Module):
    """A linear embedding of the image: enough to train, checkpoint and resume in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * H * W, 6)
        self.spec = ModelSpec(arch="tiny", pooling="none", features=6, dropout=0.0, out_dim=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(x.flatten(1)), dim=1)


class TinyBNReID(TinyReID):
    """With BatchNorm: a forward pass in train mode moves its running statistics (a state that is
    not a parameter, so a forward with no optimizer step after it still changes the run)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.fc(x.flatten(1))), dim=1)


class FakeMemory:
    """L_m against fixed class vectors, plus a record of what the trainer asked of it."""

    def __init__(self, poison_at: Optional[int] = None) -> None:
        self.centres = F.normalize(torch.eye(C, 6), dim=1)
        self.calls = 0
        self.updates = 0
        self.poison_at = poison_at

    def losses(self, f, idx, targets, irre, f_hat):
        self.calls += 1
        loss = -(f * self.centres[targets]).sum(1).mean()
        if self.poison_at is not None and self.calls == self.poison_at:
            loss = loss * float("nan")
        zero = torch.zeros(())
        return {"loss_m": loss, "loss_dis": zero, "loss_kl": zero}

    def update(self, f, idx, targets):
        self.updates += 1
        self.centres = F.normalize(self.centres + 0.1 * torch.zeros_like(self.centres).index_add_(
            0, targets, f.detach()), dim=1)   # a state that changes with every step

    def state_dict(self):
        return {"centres": self.centres.clone(), "calls": self.calls, "updates": self.updates}

    @classmethod
    def from_state(cls, state, device):
        memory = cls()
        memory.centres, memory.calls, memory.updates = state["centres"], state["calls"], state["updates"]
        return memory


def fake_labels(features: torch.Tensor) -> EpochLabels:
    labels = np.arange(len(features)) % C
    return EpochLabels(labels, C, 0, torch.zeros(C, features.shape[1]), None, 0.0)


class Recorder(Callback):
    """Remembers the hooks called, and can stop the run at a chosen step."""

    def __init__(self, stop_at: Optional[tuple[int, int]] = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.stop_at = stop_at

    def on_fit_start(self, trainer):
        self.events.append(("start", trainer.start_epoch))

    def on_step_end(self, trainer, epoch, step, means):
        self.events.append(("step", epoch, step))
        if self.stop_at == (epoch, step):
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, record):
        self.events.append(("epoch", record.epoch, record.lr, trainer.lr))

    def on_fit_end(self, trainer, result):
        self.events.append(("end",))


@pytest.fixture(scope="module")
def train_records(tmp_path_factory) -> list[ImageRecord]:
    folder = tmp_path_factory.mktemp("tiny_train")
    records = []
    for i in range(N):
        path = folder / f"{i:04d}.jpg"
        write_image(path, seed=i, size=(H, W))
        records.append(ImageRecord(str(path), i % C, i % 2))
    return records


def _cfg(epochs: int = 3, **extra: Any):
    return build_config({"dataset": "folder", "height": H, "width": W, "batch_size": 6, "num_instances": 2,
                         "iters": 2, "epochs": epochs, "step_size": 1, "lr": 0.01, "workers": 0, "device": "cpu",
                         "memorybank": "CM", "print_freq": 1, **extra})


def _trainer(records, callbacks, memory: Optional[FakeMemory] = None, epochs: int = 3, seed: int = 0,
             model: type[nn.Module] = TinyReID, **settings: Any) -> Trainer:
    torch.manual_seed(seed)
    made = [memory] if memory is not None else []

    def factory(features, labels):   # a fresh memory per epoch, as DSGL builds one
        made.append(made[0] if memory is not None else FakeMemory())
        return made[-1]

    return Trainer(_cfg(epochs, **settings), records, model(), torch.device("cpu"), callbacks,
                   cluster_fn=fake_labels, memory_factory=factory, memory_type=FakeMemory)


class StopAtEvaluation(Callback):
    """Ctrl-C in the middle of one epoch's end (before it is checkpointed)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        if record.epoch == self.epoch:
            self.epoch = -1
            raise KeyboardInterrupt


def test_the_loop_calls_the_hooks_in_order_and_records_the_lr_each_epoch_trained_with(train_records):
    rec = Recorder()
    memory = FakeMemory()
    trainer = _trainer(train_records, [rec], memory)
    result = trainer.fit()
    epochs = [e for e in rec.events if e[0] == "epoch"]
    # record 0 (the model before training) then one per epoch; StepLR(step 1, gamma 0.1) halves nothing
    # but divides by ten after each epoch: the lr in a record is the one that epoch trained with
    assert [e[1] for e in epochs] == [0, 1, 2, 3]
    assert [e[2] for e in epochs] == pytest.approx([0.01, 0.01, 0.001, 0.0001])
    assert [e[3] for e in epochs][1:] == pytest.approx([0.001, 0.0001, 0.00001])   # scheduler stepped before
    assert rec.events[0] == ("start", 0) and rec.events[-1] == ("end",)
    assert sum(1 for e in rec.events if e[0] == "step") == 6 and memory.updates == 6 and trainer.iteration == 6
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]


def test_step_hooks_come_at_every_refresh_with_the_running_means(train_records):
    """--print-freq 3 over 7 steps: the hooks see steps 3, 6 and 7, and means over the steps so far."""
    rec = Recorder()
    trainer = _trainer(train_records, [rec], epochs=1, iters=7, print_freq=3)
    trainer.fit()
    steps = [e for e in rec.events if e[0] == "step"]
    assert [e[2] for e in steps] == [3, 6, 7]


def _figures(run: RunDir) -> list[dict]:
    """The metrics rows without their timings."""
    return [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in run.read_metrics()]


def _weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("stop", [(0, 1), (1, 1), (1, 2), (2, 2)])
def test_interrupted_between_steps_and_resumed_is_the_uninterrupted_run(train_records, tmp_path, stop):
    """Saved mid-epoch (memories, labels, steps, loss sums), resumed at the next step: the same weights."""
    full_dir = RunDir(tmp_path / "full")
    full = _trainer(train_records, [Checkpointing(full_dir), MetricsLog(full_dir, 1)], seed=3)
    full.fit()
    run = RunDir(tmp_path / "run")
    first = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1), Recorder(stop_at=stop)], seed=3)
    with pytest.raises(RunInterrupted) as info:
        first.fit()
    assert info.value.exit_code == 130 and "--resume" in str(info.value)
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["epoch"] == stop[0] and saved["extra"]["progress"]["steps"] == stop[1]
    again = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1)], seed=99)   # state from the file
    again.resume(run.checkpoint)
    again.fit()
    assert all(torch.equal(a, b) for a, b in zip(_weights(again), _weights(full)))
    assert again.iteration == full.iteration == 6
    assert _figures(run) == _figures(full_dir)   # row 0 once, no row twice, the same losses


class SignalInStep(TinyBNReID):
    """Sends SIGINT to this process during the forward pass of training step `at` (counted over the run)."""

    at = 0

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.steps == self.at:
                os.kill(os.getpid(), signal.SIGINT)   # handled at the next bytecode: the flag goes up
        return super().forward(x)


@pytest.mark.parametrize("at", [1, 3, 4])
def test_a_signal_during_a_step_stops_after_that_step_and_resumes_exactly(train_records, tmp_path, at):
    """The step in flight finishes (backward, Adam, memory update), then the run saves and stops: the
    resumed run ends with the uninterrupted run's state, BatchNorm statistics included, and steps."""
    full_dir = RunDir(tmp_path / "full")
    full = _trainer(train_records, [Checkpointing(full_dir), MetricsLog(full_dir, 1)], seed=7, model=TinyBNReID)
    full.fit()
    run = RunDir(tmp_path / "run")
    SignalInStep.at = at
    first = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1)], seed=7, model=SignalInStep)
    with pytest.raises(RunInterrupted) as info:
        first.fit()
    assert info.value.exit_code == 128 + signal.SIGINT
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["extra"]["iteration"] == at == first.iteration   # the step in flight finished, no other ran
    again = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1)], seed=99, model=TinyBNReID)
    again.resume(run.checkpoint)
    again.fit()
    expected = full.model.state_dict()
    assert expected.keys() == again.model.state_dict().keys()
    assert [k for k, v in again.model.state_dict().items() if not torch.equal(v, expected[k])] == []
    assert again.iteration == full.iteration == 6
    assert _figures(run) == _figures(full_dir)


def test_augmenting_on_the_device_trains_what_the_loader_path_trains(train_records, tmp_path):
    """Images stored at the training size need no resize: the batch path's pixels are the loader's
    bit for bit (tests/test_device_batches.py), so the whole run ends with the same state."""
    runs = {}
    for where in ("loader", "device"):
        run = RunDir(tmp_path / where)
        trainer = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1)], seed=8, model=TinyBNReID,
                           augment_on=where)
        trainer.fit()
        runs[where] = (trainer.model.state_dict(), _figures(run))
    (loader_state, loader_rows), (device_state, device_rows) = runs["loader"], runs["device"]
    assert [k for k, v in device_state.items() if not torch.equal(v, loader_state[k])] == []
    assert device_rows == loader_rows


def test_interrupted_during_an_epochs_evaluation_resumes_with_that_evaluation(train_records, tmp_path):
    full_dir = RunDir(tmp_path / "full")
    full = _trainer(train_records, [Checkpointing(full_dir), MetricsLog(full_dir, 1)], seed=4)
    full.fit()
    run = RunDir(tmp_path / "run")
    first = _trainer(train_records, [StopAtEvaluation(2), Checkpointing(run), MetricsLog(run, 1)], seed=4)
    with pytest.raises(RunInterrupted):
        first.fit()
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["epoch"] == 2 and saved["extra"]["pending"]["epoch"] == 2
    assert saved["scheduler"]["last_epoch"] == 2        # the schedule matches the completed epochs
    again = _trainer(train_records, [Checkpointing(run), MetricsLog(run, 1)], seed=5)
    again.resume(run.checkpoint)
    again.fit()
    assert all(torch.equal(a, b) for a, b in zip(_weights(again), _weights(full)))
    assert _figures(run) == _figures(full_dir)


def test_a_signal_during_the_interrupt_save_still_ends_with_the_resume_line(train_records, tmp_path):
    """The save after Ctrl-C holds a second signal back and re-raises it once written: the run still
    ends with the line naming the checkpoint, not as if nothing had been trained."""
    run = RunDir(tmp_path / "run")

    class SignalDuringSave(Callback):
        def on_interrupt(self, trainer):
            raise KeyboardInterrupt

    first = _trainer(train_records, [Checkpointing(run), SignalDuringSave(), Recorder(stop_at=(1, 1))], seed=3)
    with pytest.raises(RunInterrupted, match=rf"^interrupted; resume with: dsgl train --resume {run.checkpoint}$"):
        first.fit()
    assert torch.load(run.checkpoint, weights_only=True)["extra"]["progress"]["steps"] == 1


def test_an_interrupt_outside_the_steps_leaves_the_last_epoch_checkpoint(train_records, tmp_path):
    run = RunDir(tmp_path / "run")

    class StopWhileClustering(Callback):
        def on_clustered(self, trainer, epoch, labels):
            if epoch == 1:
                raise KeyboardInterrupt

    first = _trainer(train_records, [Checkpointing(run), StopWhileClustering()], seed=6)
    with pytest.raises(RunInterrupted):
        first.fit()
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["epoch"] == 1 and "progress" not in saved["extra"] and "pending" not in saved["extra"]


def test_resuming_a_finished_run_says_how_to_extend_it(train_records, tmp_path):
    run = RunDir(tmp_path / "run")
    _trainer(train_records, [Checkpointing(run)], epochs=2).fit()
    said = []

    class Listen(Callback):
        def message(self, text):
            said.append(text)

    again = _trainer(train_records, [Checkpointing(run), Listen()], epochs=2)
    again.resume(run.checkpoint)
    assert again.fit().rows == [] and any("already finished its 2 epochs" in s and "--epochs N" in s for s in said)


def test_interrupt_before_anything_was_trained_says_so(train_records, tmp_path):
    first = _trainer(train_records, [StopAtEvaluation(0), Checkpointing(RunDir(tmp_path / "run"))])
    with pytest.raises(RunInterrupted, match="before anything was trained"):
        first.fit()


def test_a_nan_loss_names_the_last_good_checkpoint(train_records, tmp_path):
    run = RunDir(tmp_path / "run")
    trainer = _trainer(train_records, [Checkpointing(run)], FakeMemory(poison_at=3))
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and str(run.checkpoint) in message
    assert torch.load(run.checkpoint, weights_only=True)["epoch"] == 1


def test_a_nan_before_any_checkpoint_says_so(train_records):
    trainer = _trainer(train_records, [], FakeMemory(poison_at=1))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
        trainer.fit()


def test_without_a_console_callback_the_trainer_prints_nothing(train_records, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    _trainer(train_records, [Checkpointing(run), MetricsLog(run, print_freq=1)]).fit()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and "loss_m" in rows[1] and "loss_m" not in rows[0]
    assert "epoch 1 step 2/2" in (run.path / "train.log").read_text()


def test_tensorboard_callback_writes_the_epoch_scalars(train_records, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "tb"
    _trainer(train_records, [TensorBoardLog(folder)]).fit()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"epoch/loss_m", "epoch/lr", "step/loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("epoch/loss_m")] == [1, 2, 3]


def test_epoch_record_rows_leave_out_what_was_not_measured():
    row = EpochRecord(epoch=2, mAP=0.5, losses={"loss_m": 1.0}, seconds_train=1.23456).row()
    assert row == {"epoch": 2, "mAP": 0.5, "seconds_train": 1.235, "loss_m": 1.0}


def test_evaluation_from_images_decoded_once_equals_the_loader_path(train_records, monkeypatch):
    """--augment-on device evaluates from query and gallery decoded once per run: the same figures as
    the per-image path (no resize here, so the pixels are equal), and no file is read again."""
    from dsgl_cli.data import image_cache
    from dsgl_cli.training.callbacks import Evaluation

    query, gallery = train_records[:6], train_records[6:]
    figures = {}
    for where in ("loader", "device"):
        evaluation = Evaluation(query, gallery, eval_step=1)
        trainer = _trainer(train_records, [evaluation], seed=4, augment_on=where)
        record = EpochRecord(epoch=0, lr=0.0)
        evaluation.on_epoch_end(trainer, record)
        figures[where] = (record.mAP, record.rank1, record.mINP)
        if where == "device":
            decoded = evaluation._images
            monkeypatch.setattr(image_cache, "decode_images", lambda *a, **k: pytest.fail("decoded twice"))
            evaluation.on_epoch_end(trainer, EpochRecord(epoch=1, lr=0.0))
            assert evaluation._images is decoded
    assert figures["device"] == figures["loader"] and figures["loader"][0] is not None


# ----- issue 26: the untrained baseline, shipped models without the optimizer, timings, one camera ----------


def test_model_init_holds_the_untrained_weights_and_shipped_models_carry_no_optimizer(train_records, tmp_path):
    run = RunDir(tmp_path / "run")
    trainer = _trainer(train_records, [Checkpointing(run)], epochs=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    init = torch.load(run.init, weights_only=True)
    best = torch.load(run.best, weights_only=True)
    last = torch.load(run.checkpoint, weights_only=True)
    assert init["epoch"] == 0 and best["epoch"] == 1
    assert all(torch.equal(v, before[k]) for k, v in init["state_dict"].items())
    assert not all(torch.equal(v, before[k]) for k, v in best["state_dict"].items())   # it trained
    for shipped in (init, best):   # weights and the run's settings (dsgl cluster reads them), nothing to resume
        assert not {"optimizer", "scheduler", "rng"} & set(shipped)
        assert set(shipped["extra"]) == {"config"} and shipped["extra"]["config"]["train"]["epochs"] == 1
    assert {"optimizer", "scheduler", "rng"} <= set(last)


def test_epochs_zero_records_and_saves_only_the_model_before_training(train_records, tmp_path):
    run = RunDir(tmp_path / "run")
    rec = Recorder()
    _trainer(train_records, [rec, Checkpointing(run), MetricsLog(run, print_freq=1)], epochs=0).fit()
    assert [e[1] for e in rec.events if e[0] == "epoch"] == [0] and rec.events[-1] == ("end",)
    assert [r["epoch"] for r in run.read_metrics()] == [0]
    assert run.init.is_file() and not run.best.is_file()


def test_extraction_and_clustering_are_timed_apart(train_records, monkeypatch):
    import time

    def slow_labels(features):
        time.sleep(0.05)
        return fake_labels(features)

    trainer = _trainer(train_records, [], epochs=1)
    trainer.cluster_fn = slow_labels
    extract = trainer.extract_train_features

    def slow_extract():
        time.sleep(0.3)
        return extract()

    monkeypatch.setattr(trainer, "extract_train_features", slow_extract)
    (row,) = trainer.fit().rows
    assert row["seconds_extract"] >= 0.3 and 0.05 <= row["seconds_cluster"] < 0.3


def test_one_camera_records_no_cross_camera_share(train_records):
    from dsgl_cli.clustering.label_free import label_free_figures

    def with_figures(features):
        labels = fake_labels(features)
        labels.label_free = label_free_figures(labels.labels, cams, features, None)
        return labels

    for cameras, recorded in ((1, False), (2, True)):
        records = [ImageRecord(r.path, r.pid, i % cameras) for i, r in enumerate(train_records)]
        cams = np.array([r.camid for r in records])
        trainer = _trainer(records, [], epochs=1)
        trainer.cluster_fn = with_figures
        (row,) = trainer.fit().rows
        assert ("cross_camera_share" in row) is recorded and "intra_similarity" in row
