"""End-to-end `dsgl train` on a tiny generated set, on CPU (issue: training engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dsgl_cli.cli import app
from tests.helpers import make_camera_folders, make_market_like

runner = CliRunner()

TINY = ["-d", "folder", "-a", "resnet18", "--pretrained", "none", "--height", "32", "--width", "16",
        "-b", "8", "--num-instances", "4", "--iters", "2", "--k1", "6", "--k2", "2", "--eps", "0.6",
        "-j", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_market_like(root, train_ids=8, test_ids=4, cams=3, per_cam=2, size=(32, 16), colored=True)
    return root


def _train(data: Path, logs: Path, *extra: str):
    return runner.invoke(app, ["train", *TINY, "--data-dir", str(data), "--logs-dir", str(logs), *extra])


def _rows(logs: Path) -> list[dict]:
    return [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_epochs_leave_a_complete_run_directory(tiny_data: Path, tmp_path: Path):
    logs = tmp_path / "run"
    result = _train(tiny_data, logs, "--epochs", "2")
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "train.log", "metrics.jsonl", "checkpoint.pth", "model_best.pth",
                 "training_curves.png"):
        assert (logs / name).is_file(), name
    rows = _rows(logs)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert all(0.0 <= r[key] <= 1.0 for r in rows)
    trained = rows[1]
    for key in ("num_clusters", "num_outliers", "precision", "recall", "ari", "loss_m", "loss_dis", "loss_kl",
                "seconds_cluster", "seconds_train", "seconds_eval"):
        assert key in trained, key
    assert trained["num_clusters"] >= 2
    assert trained["loss"] == pytest.approx(trained["loss_m"] + trained["loss_dis"] + trained["loss_kl"], rel=1e-5)
    ckpt = torch.load(logs / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model"]["arch"] == "resnet18" and "optimizer" in ckpt
    best = torch.load(logs / "model_best.pth", weights_only=True)
    assert best["best_mAP"] == pytest.approx(max(r["mAP"] for r in rows[1:]))
    init = torch.load(logs / "model_init.pth", weights_only=True)   # the untrained baseline, evaluated as row 0
    assert init["epoch"] == 0 and init["metrics"]["mAP"] == rows[0]["mAP"]
    for shipped in ("model_best.pth", "model_init.pth"):   # weights, not the optimizer: a third of checkpoint.pth
        assert (logs / shipped).stat().st_size < 0.5 * (logs / "checkpoint.pth").stat().st_size, shipped
    assert "seconds_extract" in trained and "estimated duration on cpu: about" in result.output
    assert " extract " in next(line for line in result.output.splitlines() if line.startswith("epoch 1/2"))
    # a second run must not overwrite this one
    again = _train(tiny_data, logs, "--epochs", "2")
    assert again.exit_code == 1 and "already holds a run" in again.output


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(tiny_data: Path, tmp_path: Path):
    logs = tmp_path / "run"
    assert _train(tiny_data, logs, "--epochs", "1").exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(logs / "checkpoint.pth"), "--epochs", "2",
                                 "--data-dir", str(tiny_data), "-j", "0"])
    assert result.exit_code == 0, result.output
    assert "after epoch 1" in result.output
    assert [r["epoch"] for r in _rows(logs)] == [0, 1, 2]
    assert torch.load(logs / "checkpoint.pth", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_interrupt_leaves_a_resumable_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch):
    from dsgl_cli.training.trainer import Trainer

    original = Trainer.train_epoch

    def interrupt_second_epoch(self, progress):
        if progress.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_second_epoch)
    logs = tmp_path / "run"
    result = _train(tiny_data, logs, "--epochs", "3")
    assert result.exit_code == 130
    assert "--resume" in result.output
    ckpt = torch.load(logs / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["metrics"]["interrupted"] is True and ckpt["extra"]["progress"]["steps"] == 0
    monkeypatch.setattr(Trainer, "train_epoch", original)
    result = runner.invoke(app, ["train", "--resume", str(logs), "--data-dir", str(tiny_data), "-j", "0"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in _rows(logs)] == [0, 1, 2, 3]


@pytest.mark.slow
def test_hopeless_eps_stops_with_a_suggestion(tiny_data: Path, tmp_path: Path):
    result = _train(tiny_data, tmp_path / "run", "--epochs", "1", "--eps", "0.001")
    assert result.exit_code == 1
    assert "try a larger --eps" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch):
    from dsgl_cli.method.memory import DSGLMemory
    from dsgl_cli.training.trainer import Trainer

    original = DSGLMemory.losses

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if Trainer_epoch["epoch"] == 1:
            out["loss_m"] = out["loss_m"] * float("nan")
        return out

    Trainer_epoch = {"epoch": 0}
    before = Trainer.cluster_epoch

    def track(self, epoch):
        Trainer_epoch["epoch"] = epoch
        return before(self, epoch)

    monkeypatch.setattr(DSGLMemory, "losses", poisoned)
    monkeypatch.setattr(Trainer, "cluster_epoch", track)
    logs = tmp_path / "run"
    result = _train(tiny_data, logs, "--epochs", "2")
    assert result.exit_code == 1
    assert "loss became nan" in result.output and "last good checkpoint" in result.output
    assert torch.load(logs / "checkpoint.pth", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("args, message, code", [
    (["-a", "resnet5"], "did you mean", 2),
    (["-b", "-8"], "-b/--batch-size: must be a positive integer", 2),
    (["-d", "market"], "did you mean 'market1501'", 2),
    (["--config", "/nonexistent/cfg.yaml"], "--config: file not found", 2),
    (["--memorybank", "DLhybird"], "did you mean 'DLhybrid'", 2),
])
def test_bad_input_is_one_line_and_nonzero(tiny_data: Path, tmp_path: Path, args, message, code):
    result = runner.invoke(app, ["train", "-d", "folder", "--data-dir", str(tiny_data),
                                 "--logs-dir", str(tmp_path / "r"), *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_pretrained_weights_say_what_to_do_and_leave_no_run_folder(tiny_data: Path, tmp_path: Path,
                                                                           monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("DSGL_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for logs in (["--logs-dir", str(tmp_path / "r" / "site")], []):   # a named folder, and runs/folder
        result = runner.invoke(app, ["train", "-d", "folder", "--data-dir", str(tiny_data), "-a", "resnet18",
                                     "--device", "cpu", *logs])
        assert result.exit_code != 0
        assert "--pretrained none" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()   # training never started


def test_preset_cpu_small_picks_the_demos_settings_for_any_data_under_the_flags(tiny_data: Path, tmp_path: Path):
    import yaml

    result = runner.invoke(app, ["train", "-d", "folder", "--data-dir", str(tiny_data), "--preset", "cpu-small",
                                 "--epochs", "3", "--print-config", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert (printed["model"]["arch"], printed["model"]["pretrained"], printed["data"]["height"]) == \
        ("resnet18", "none", 64)
    assert (printed["train"]["epochs"], printed["train"]["iters"], printed["cluster"]["eps"]) == (3, 30, 0.5)
    result = runner.invoke(app, ["train", "--preset", "cpu-small", "--resume", str(tmp_path / "checkpoint.pth")])
    assert result.exit_code == 2 and "--preset chooses a new run's settings" in result.output


@pytest.mark.slow
def test_seed_usage_line_parses_and_starts_training(tmp_path: Path, monkeypatch):
    """The seed README's Market line, verbatim after `dsgl train`, on the seed's layout."""
    from dsgl_cli.models.weights import candidate_files
    from dsgl_cli.training.callbacks import Evaluation
    from dsgl_cli.training.trainer import Trainer

    data = tmp_path / "data"
    make_market_like(data / "market1501" / "Market-1501-v15.09.15", train_ids=6, test_ids=2, cams=2,
                     per_cam=2, size=(32, 16), colored=True)
    # ImageNet weights from the local hub cache: a file of the right name and shapes.
    import torchvision

    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), hub / candidate_files("resnet50")[0])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("DSGL_OFFLINE", "1")
    started = {}

    def stop_at_first_step(self, progress):
        started["epoch"] = progress.epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", stop_at_first_step)
    monkeypatch.setattr(Evaluation, "due", lambda self, trainer, epoch: False)
    line = ("-b 64 -a resnet50 -d market1501 --iters 400 --momentum 0.1 --eps 0.45 --num-instances 16 "
            "--pooling-type gem --memorybank DLhybrid --epochs 60 --logs-dir examples/logs --step-size 25")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", *line.split(), "--data-dir", str(data), "-j", "0", "--eps", "0.9",
                                 "--k1", "6", "--k2", "2"])
    assert started == {"epoch": 0}, result.output
    assert result.exit_code == 130
    saved = (tmp_path / "examples" / "logs" / "config.yaml").read_text()
    for fragment in ("batch_size: 64", "num_instances: 16", "iters: 400", "epochs: 60", "step_size: 25",
                     "arch: resnet50", "pooling_type: gem", "memorybank: DLhybrid"):
        assert fragment in saved, fragment


@pytest.mark.slow
def test_resume_of_an_authors_checkpoint_continues_as_the_reference(tiny_data: Path, tmp_path: Path):
    """Weights and epoch from checkpoint.pth.tar; optimizer, schedule and best mAP afresh (method.md 7)."""
    from tests import independent

    ckpt = independent.authors_checkpoint("resnet18", seed=3)
    ckpt["epoch"] = 2
    path = tmp_path / "logs" / "checkpoint.pth.tar"
    path.parent.mkdir()
    torch.save(ckpt, path)
    logs = tmp_path / "resumed"
    result = runner.invoke(app, ["train", *TINY, "--data-dir", str(tiny_data), "--logs-dir", str(logs),
                                 "--resume", str(path), "--epochs", "3", "--step-size", "1"])
    assert result.exit_code == 0, result.output
    assert "start afresh" in result.output
    rows = _rows(logs)
    assert [r["epoch"] for r in rows] == [3]               # epochs 1-2 were the authors'; no row 0
    assert rows[0]["lr"] == pytest.approx(0.00035)          # a fresh schedule: the base rate, not 3.5e-6
    saved = torch.load(logs / "checkpoint.pth", weights_only=True)
    assert saved["epoch"] == 3
    # the weights were loaded, then trained: 2 Adam steps at lr 3.5e-4 move each weight by about 7e-4 at most,
    # while a model that ignored the file would differ by the spread of a fresh initialisation (~0.1)
    moved = (saved["state_dict"]["base.0.weight"] - ckpt["state_dict"]["module.base.0.weight"]).abs().max()
    assert 0 < float(moved) < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_camera_folders_train_without_labels_and_keep_the_last_epoch(tmp_path: Path, augment_on: str):
    """A user's cameras (no identities, no query/gallery, mixed image sizes and modes): label-free rows,
    model_best is the last epoch, and the summary says there is no mAP to report."""
    data = tmp_path / "cameras"
    make_camera_folders(data, people=4, per_camera=3)
    logs = tmp_path / "run"
    result = _train(data, logs, "--epochs", "2", "--augment-on", augment_on, "--eps", "0.7")
    assert result.exit_code == 0, result.output
    rows = _rows(logs)
    assert [r["epoch"] for r in rows][-2:] == [1, 2]
    for row in rows:
        assert "mAP" not in row and "precision" not in row and "ari" not in row   # nothing needs a label
    for key in ("num_clusters", "num_outliers", "cross_camera_share", "intra_similarity"):
        assert key in rows[-1], key
    assert "ari_prev" in rows[-1] and "nmi_prev" in rows[-1]
    best = torch.load(logs / "model_best.pth", weights_only=True)
    last = torch.load(logs / "checkpoint.pth", weights_only=True)
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in best["state_dict"].items())
    assert "model_best.pth is the last epoch (no mAP without labels)" in result.output.splitlines()[-1]


@pytest.mark.slow
def test_epochs_0_leaves_the_untrained_baseline_that_cluster_embed_and_search_read(tmp_path: Path):
    """--epochs 0: row 0 and model_init.pth only; dsgl cluster, embed and search take it like any checkpoint,
    cluster with the run's own settings; one camera is said once."""
    data = tmp_path / "cams"
    written = make_camera_folders(data, cameras=("entrance",), people=4, per_camera=3)
    logs = tmp_path / "run"
    result = _train(data, logs, "--epochs", "0", "--eps", "0.55")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in _rows(logs)] == [0]
    assert (logs / "model_init.pth").is_file() and not (logs / "model_best.pth").exists()
    assert "model_init.pth holds the model before training" in result.output.splitlines()[-1]
    assert result.output.count("one camera: no cross-camera share is recorded") == 1
    init = str(logs / "model_init.pth")
    clustered = runner.invoke(app, ["cluster", init, "-d", "folder", "--data-dir", str(data), "-j", "0",
                                    "--device", "cpu"])
    assert clustered.exit_code == 0, clustered.output
    assert "clustering with eps 0.55, k1 6, k2 2" in clustered.output   # the run's, not the defaults 0.6 / 30
    npz = tmp_path / "gallery.npz"
    assert runner.invoke(app, ["embed", init, str(data), "--output", str(npz), "-j", "0"]).exit_code == 0
    query = sorted(written)[0]
    found = runner.invoke(app, ["search", init, "-q", query, "-g", str(npz), "--top", "3", "--json",
                                str(tmp_path / "s.json")])
    assert found.exit_code == 0, found.output
    assert query not in json.loads((tmp_path / "s.json").read_text())["queries"][0]["gallery_paths"]
