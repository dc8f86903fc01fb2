"""Checkpoint I/O: atomic saves, weights_only round trips, the authors' format, clear errors."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from dsgl_cli.errors import DsglError, WriteFailed
from dsgl_cli.models import checkpoint as C
from dsgl_cli.models.backbones import build_backbone
from dsgl_cli.models.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from dsgl_cli.models.reid import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


X = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(0))


def _trained_model(arch="resnet18", pooling="gem", features=0, seed=0):
    """A model whose BN statistics and GeM p are not at their initial values."""
    torch.manual_seed(seed)
    model = build_model(arch, pooling=pooling, features=features)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 16))
        if pooling == "gem":
            model.gap.p.fill_(3.7)
        model.feat_bn.bias.add_(0.1)
    return model.eval()


def _authors_file(model, path: Path) -> Path:
    """The authors' release format: DataParallel keys, {'state_dict','epoch','best_mAP' (numpy float)}."""
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 49, "best_mAP": np.float64(0.873)}, path)
    return path


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_ours(tmp_path):
    model = _trained_model(features=16)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4, weight_decay=5e-4)
    model.train()
    model(X).sum().backward()
    opt.step()
    model.eval()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.1)
    payload = make_checkpoint(model, epoch=7, height=32, width=16,
                              metrics={"mAP": np.float32(0.5), "rank1": 0.7, "clusters": np.int64(12)},
                              best_mAP=0.5, optimizer=opt, scheduler=sched, rng=capture_rng_state(),
                              extra={"eps": 0.45, "hist": np.arange(3)})
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pth", payload)
    assert _no_temp_files(path.parent)
    raw = torch.load(path, weights_only=True)  # plain weights_only load works without any allowlist
    assert raw["format"] == "dsgl" and raw["format_version"] == 1
    assert raw["model"] == {"arch": "resnet18", "pooling": "gem", "features": 16, "dropout": 0.0,
                            "height": 32, "width": 16}
    assert raw["metrics"]["clusters"] == 12 and isinstance(raw["metrics"]["mAP"], float)
    assert torch.equal(raw["extra"]["hist"], torch.arange(3))
    opt2 = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    opt2.load_state_dict(raw["optimizer"])
    assert opt2.param_groups[0]["lr"] == 3.5e-4

    loaded, info = load_model(path)
    assert info.format == "dsgl" and info.arch == "resnet18" and info.features == 16
    assert (info.height, info.width, info.epoch, info.best_mAP) == (32, 16, 7, 0.5)
    assert info.warnings == [] and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    assert not loaded.feat_bn.bias.requires_grad


def test_atomic_save_interrupted_keeps_previous(tmp_path, monkeypatch):
    model = _trained_model()
    path = tmp_path / "model_best.pth.tar"
    save_checkpoint(path, make_checkpoint(model, epoch=1, best_mAP=0.1))
    before = path.read_bytes()

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(C.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_checkpoint(model, epoch=2, best_mAP=0.2))
    monkeypatch.setattr(C.torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert _no_temp_files(tmp_path)


def test_unsafe_payload_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match="payload.extra.obj"):
        save_checkpoint(tmp_path / "c.pth", {"state_dict": {}, "extra": {"obj": object()}})
    assert list(tmp_path.iterdir()) == []


def test_rng_round_trip(tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in the python state
    np.random.standard_normal()
    state = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
             torch.rand(3))
    path = save_checkpoint(tmp_path / "rng.pth", {"state_dict": {"w": torch.zeros(1)}, "rng": state})
    reloaded = torch.load(path, weights_only=True)["rng"]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(reloaded)
    second = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
              torch.rand(3))
    assert first[:4] == second[:4] and torch.equal(first[4], second[4])


@pytest.mark.parametrize("features", [0, 8])
def test_authors_format_loads_and_reproduces(tmp_path, features):
    model = _trained_model(features=features)
    path = _authors_file(model, tmp_path / "model_best.pth.tar")
    loaded, info = load_model(path, arch="resnet18")
    assert info.format == "authors" and info.pooling == "gem" and info.features == features
    assert info.epoch == 49 and info.best_mAP == pytest.approx(0.873)
    assert (info.height, info.width) == (256, 128)
    assert loaded.gap.p.item() == pytest.approx(3.7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


def test_authors_format_without_arch_is_inferred_with_note(tmp_path):
    path = _authors_file(_trained_model(pooling="avg"), tmp_path / "checkpoint.pth.tar")
    _, info = load_model(path)
    assert info.arch == "resnet18" and info.pooling == "avg"
    notes = " ".join(info.notes)
    assert "does not store the architecture" in notes and "--pooling-type max" in notes


def test_pooling_contradiction_warns(tmp_path):
    gem_path = _authors_file(_trained_model(pooling="gem"), tmp_path / "gem.pth.tar")
    model, info = load_model(gem_path, arch="resnet18", pooling="avg")
    assert info.pooling == "gem" and hasattr(model.gap, "p")
    assert len(info.warnings) == 1 and "--pooling-type avg contradicts" in info.warnings[0]
    assert "gap.p" in info.warnings[0]

    avg_path = _authors_file(_trained_model(pooling="avg"), tmp_path / "avg.pth.tar")
    _, info = load_model(avg_path, arch="resnet18", pooling="gem")
    assert info.pooling == "avg" and "contradicts" in info.warnings[0]
    _, info = load_model(avg_path, arch="resnet18", pooling="max")
    assert info.pooling == "max" and info.warnings == []

    ours = save_checkpoint(tmp_path / "ours.pth", make_checkpoint(_trained_model(pooling="max"), epoch=0))
    _, info = load_model(ours, pooling="gem", arch="resnet34", features=4)
    assert info.pooling == "max" and info.arch == "resnet18" and len(info.warnings) == 3


def test_wrong_architecture_error_counts_and_guess(tmp_path):
    path = _authors_file(_trained_model(), tmp_path / "r18.pth.tar")
    with torch.device("meta"):
        keys18 = set(build_backbone("resnet18").state_dict())
        keys34 = set(build_backbone("resnet34").state_dict())
    n_missing = len([k for k in keys34 - keys18 if not k.endswith("num_batches_tracked")])
    with pytest.raises(DsglError) as err:
        load_model(path, arch="resnet34")
    msg = str(err.value)
    assert f"does not fit resnet34: {n_missing} missing, 0 unexpected and 0 mismatched-shape keys" in msg
    assert "it looks like resnet18 (pass --arch resnet18)" in msg and "\n" not in msg


def test_bottleneck_checkpoint_into_basic_arch(tmp_path):
    model = build_model("resnet50", pooling="avg").eval()
    path = _authors_file(model, tmp_path / "r50.pth.tar")
    with pytest.raises(DsglError, match=r"does not fit resnet18: \d+ missing, \d+ unexpected .*looks like resnet50"):
        load_model(path, arch="resnet18")


class Evil:
    pass


def test_load_errors_are_one_line(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "absent.pth"
    cases["directory"] = tmp_path / "adir"
    cases["directory"].mkdir()
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n" * 20)
    cases["text"] = text
    good = save_checkpoint(tmp_path / "good.pth", make_checkpoint(_trained_model(), epoch=3))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = truncated
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    cases["pickle"] = evil
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases["empty"] = empty
    expected = {"missing": "does not exist", "directory": "is a directory", "text": "is a text file",
                "truncated": "not a readable torch file", "pickle": "refused for safety",
                "empty": "empty"}
    for name, path in cases.items():
        with pytest.raises(DsglError) as err:
            load_model(path)
        msg = str(err.value)
        assert expected[name] in msg, (name, msg)
        assert "\n" not in msg and str(path) in msg, name


def test_newer_format_and_non_checkpoint(tmp_path):
    path = tmp_path / "future.pth"
    torch.save({"format": "dsgl", "format_version": 99, "state_dict": {"a": torch.zeros(1)}}, path)
    with pytest.raises(DsglError, match="newer"):
        load_checkpoint(path)
    other = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], other)
    with pytest.raises(DsglError, match="not a checkpoint dictionary"):
        load_checkpoint(other)
    nosd = tmp_path / "nosd.pth"
    torch.save({"epoch": 3}, nosd)
    with pytest.raises(DsglError, match="no 'state_dict'"):
        load_checkpoint(nosd)


def test_old_numpy_scalar_in_legacy_file_loads(tmp_path):
    """Files from numpy<2 name numpy.core.multiarray.scalar; weights_only loading must still accept them."""
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": {"module.a": torch.ones(2)}, "epoch": 3, "best_mAP": np.float64(0.5)}, buf,
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = buf.getvalue()
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pth.tar"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ckpt = load_checkpoint(path)
    assert float(ckpt["best_mAP"]) == 0.5 and ckpt["epoch"] == 3


# ----------------------------------------------------------------------------- failed and killed writes
def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _half_then(error: BaseException):
    """A torch.save that writes half of the real file, then fails like a full disk (or ``error``)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise error

    return save


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, make_checkpoint(_trained_model(), epoch=1))
    before = path.read_bytes()
    monkeypatch.setattr(C.torch, "save", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteFailed) as err:
        save_checkpoint(path, make_checkpoint(_trained_model(), epoch=2))
    assert str(err.value) == (f"cannot write checkpoint {path}: No space left on device; free some space or "
                              "write to another disk; the previous checkpoint there is intact")
    monkeypatch.undo()
    assert path.read_bytes() == before and _temporaries(tmp_path) == []


@pytest.mark.parametrize("where", ["fsync", "wrapped", "open"])
def test_other_write_failures_are_one_line_and_leave_nothing(tmp_path, monkeypatch, where):
    path = tmp_path / "sub" / "model_best.pth"
    if where == "fsync":   # delayed allocation: the disk is found full when the data is flushed
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(C.os, "fsync", full)
    elif where == "wrapped":   # torch's own writer reports the OSError of its file as a RuntimeError
        def wrapped(obj, f, *args, **kwargs):
            try:
                raise OSError(errno.EIO, "Input/output error")
            except OSError as exc:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from exc
        monkeypatch.setattr(C.torch, "save", wrapped)
    else:
        real_open = os.open

        def refused(name, *args, **kwargs):
            if str(name).endswith(".tmp"):
                raise PermissionError(errno.EACCES, "Permission denied", str(name))
            return real_open(name, *args, **kwargs)
        monkeypatch.setattr(C.os, "open", refused)
    with pytest.raises(WriteFailed, match=rf"^cannot write checkpoint {path}: [A-Z][^\n]*$") as err:
        save_checkpoint(path, make_checkpoint(_trained_model(), epoch=2))
    assert "intact" not in str(err.value)   # there was no previous checkpoint
    monkeypatch.undo()
    assert not path.exists() and _temporaries(path.parent) == []


def test_a_bug_in_the_write_is_not_disguised_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(C.torch, "save", _half_then(ValueError("cannot pickle")))
    with pytest.raises(ValueError, match="cannot pickle"):
        save_checkpoint(tmp_path / "c.pth", {"state_dict": {"w": torch.zeros(2)}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_writing_lets_the_write_finish_then_acts(tmp_path, monkeypatch, signum):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, make_checkpoint(_trained_model(), epoch=1))
    real_save = torch.save

    def save_then_signalled(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signum)   # arrives in the middle of the write
        real_save(obj, f, *args, **kwargs)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signum, stop)
    try:
        monkeypatch.setattr(C.torch, "save", save_then_signalled)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, make_checkpoint(_trained_model(), epoch=2))
        assert signal.getsignal(signum) is stop   # the caller's handler is back, and it ran
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2 and _temporaries(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("wrapped", [False, True], ids=["raised", "wrapped-by-torch"])
def test_a_second_signal_abandons_the_write(tmp_path, monkeypatch, signum, wrapped):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, make_checkpoint(_trained_model(), epoch=1))
    before = path.read_bytes()
    real_save = torch.save

    def save_signalled_twice(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signum)
        f.write(b"PK\x03\x04 half")
        try:
            os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            if wrapped:   # what torch's C++ writer makes of an exception raised in its write callback
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2") from None
            raise
        real_save(obj, f, *args, **kwargs)

    calls = []
    previous = signal.signal(signum, lambda signum, frame: calls.append(signum))
    try:
        monkeypatch.setattr(C.torch, "save", save_signalled_twice)
        with pytest.raises(KeyboardInterrupt) as stopped:
            save_checkpoint(path, make_checkpoint(_trained_model(), epoch=2))
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert stopped.value.signum == signum
    assert calls == [signum]   # the signal reached the caller's handler once the file was gone
    assert path.read_bytes() == before and _temporaries(tmp_path) == []


@pytest.mark.parametrize("disposition", ["ignored", "thread"])
def test_where_sigterm_is_not_ours_a_failing_write_still_cleans_up(tmp_path, monkeypatch, disposition):
    import threading

    monkeypatch.setattr(C.torch, "save", _half_then(ValueError("cannot pickle")))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            save_checkpoint(tmp_path / "c.pth", {"state_dict": {"w": torch.zeros(2)}})
        except BaseException as exc:
            errors.append(exc)

    if disposition == "ignored":
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            write()
        finally:
            signal.signal(signal.SIGTERM, previous)
    else:
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    assert [type(e) for e in errors] == [ValueError] and list(tmp_path.iterdir()) == []
