"""Loader workers never outlive their loader, and a process never waits for one at exit."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

from dsgl_cli.cli import end_children
from dsgl_cli.data.loaders import checked, extraction_loader
from dsgl_cli.data.transforms import test_transform as eval_transform
from dsgl_cli.errors import DsglError
from tests.helpers import write_image


def _paths(tmp_path, n: int = 8) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"{i:04d}_c1s1_000001_00.jpg"
        write_image(path, seed=i)
        paths.append(str(path))
    return paths


def _alive_workers() -> list[multiprocessing.process.BaseProcess]:
    return [child for child in multiprocessing.active_children() if child.is_alive()]


def test_an_error_inside_the_block_still_stops_the_workers(tmp_path):
    loader = extraction_loader(_paths(tmp_path), eval_transform(32, 16), batch_size=2, workers=2,
                               device=torch.device("cpu"))
    kept: list[BaseException] = []
    try:
        with checked(loader) as batches:
            for _ in batches:
                assert len(_alive_workers()) == 2
                raise ValueError("a failing step")
    except ValueError as exc:
        kept.append(exc)   # its traceback holds the frames, and with them the loader's iterator
    assert kept and _alive_workers() == []


def test_an_unreadable_image_is_one_error_naming_it_and_the_workers_stop(tmp_path):
    paths = _paths(tmp_path, 4)
    with open(paths[2], "wb") as handle:
        handle.write(b"not a picture")
    loader = extraction_loader(paths, eval_transform(32, 16), batch_size=2, workers=2, device=torch.device("cpu"))
    with pytest.raises(DsglError, match=rf"^cannot read image {paths[2]}"):
        with checked(loader) as batches:
            for _ in batches:
                pass
    assert _alive_workers() == []


def _ignore_sigterm(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(120)


def test_end_children_ends_a_child_that_ignores_sigterm():
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_ignore_sigterm, args=(ready,), daemon=True)
    child.start()
    assert ready.wait(30)
    os.kill(child.pid, signal.SIGTERM)   # what multiprocessing's exit would send, then join for ever
    child.join(0.5)
    assert child.is_alive()
    end_children()
    assert not child.is_alive() and child.exitcode == -signal.SIGKILL
