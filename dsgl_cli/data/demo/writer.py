"""Rendering and writing the planned images, in this process or on a pool of worker processes.

Why processes: rendering is many small NumPy calls, bound by the interpreter, so threads would
queue on the GIL. Every image depends only on (seed, split, file name), so the bytes are the same
whatever the number of workers or the order chunks finish in. Workers are started with "spawn"
(a fresh interpreter, as on macOS and Windows): the CLI may already hold threads (PyTorch,
progress bars) that a forked child would inherit in an undefined state.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from PIL import Image

from dsgl_cli.data.demo.plan import DemoPlan, ImageSpec
from dsgl_cli.data.demo.render import render_image
from dsgl_cli.errors import DsglError

JPEG_QUALITY = 90
MAX_CHUNK = 64  # images per task: ~0.3-0.6 s of work, so progress moves and Ctrl-C is answered quickly
MIN_POOL_IMAGES = 400  # below this, starting workers (~1 s each: a fresh interpreter) costs more than it saves

Progress = Callable[[int, int], None]


def default_workers() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def refuse_in_starting_worker() -> None:
    """Stop a script without a main guard from generating again inside each worker it starts.

    "spawn" runs the parent's main script in every new worker; unguarded, its call to
    generate_demo would clear the very folder the pool is writing. (`_inheriting` is what
    multiprocessing itself checks for this.)
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise DsglError("the demo set cannot be generated while a worker process starts: "
                        "put the calling script's top level under `if __name__ == '__main__':`")


def check_pool_settings(workers: Optional[int], chunk_size: Optional[int]) -> None:
    """A usage error for a worker count or chunk size below 1 (None: automatic)."""
    if (workers is not None and workers < 1) or (chunk_size is not None and chunk_size < 1):
        raise DsglError(f"demo workers and chunk size must be >= 1, got {workers} and {chunk_size}", exit_code=2)


def chunk_bounds(total: int, workers: int, chunk_size: Optional[int] = None) -> list[tuple[int, int]]:
    """[start, stop) index ranges into plan.images: at most MAX_CHUNK each, >= 4 per worker when possible."""
    if chunk_size is None:
        chunk_size = max(1, min(MAX_CHUNK, math.ceil(total / (4 * max(1, workers)))))
    return [(a, min(a + chunk_size, total)) for a in range(0, total, chunk_size)]


def write_one(plan: DemoPlan, root: Path, spec: ImageSpec) -> None:
    """Render one planned image and write it as a JPEG under root/split/name."""
    Image.fromarray(render_image(plan, spec)).save(root / spec.split / spec.name, format="JPEG", quality=JPEG_QUALITY)


def sub_plan(plan: DemoPlan, start: int, stop: int) -> DemoPlan:
    """plan.images[start:stop] with only the identities they show: a task's payload of a few KB."""
    images = plan.images[start:stop]
    pids = {spec.pid for spec in images}
    identities = {pid: who for pid, who in plan.identities.items() if pid in pids}
    return dataclasses.replace(plan, images=images, identities=identities)


# ----------------------------------------------------------------------------- worker side


def _init_worker() -> None:
    """Leave Ctrl-C to the parent, which stops the pool (workers usually inherit SIG_IGN already)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_chunk(plan: DemoPlan, root: str) -> int:
    """Write every image of a sub-plan; an OSError (disk full, permissions) travels back to the parent."""
    for spec in plan.images:
        write_one(plan, Path(root), spec)
    return len(plan.images)


# ----------------------------------------------------------------------------- parent side


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """While workers start, ignore SIGINT here so they inherit SIG_IGN (no traceback from a child on Ctrl-C).

    The window is short (starting a process only writes a few KB to its pipe); a Ctrl-C inside
    it is lost, one after it stops the pool.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_images(
    plan: DemoPlan,
    root: Path,
    workers: Optional[int] = None,
    chunk_size: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> int:
    """Write every planned image under `root` and say how many processes did; `progress(done, total)`
    is called once per image, in order.

    `workers` None means every core for sets of MIN_POOL_IMAGES or more and this process alone
    below; a number is taken as given (1: no pool). With workers > 1 the calls come in bursts,
    one per finished chunk. On any error or interrupt, chunks not yet started are cancelled and
    running ones finish before the error propagates, so no worker writes into the folder
    afterwards. OSError from a worker is re-raised here as is; a worker that dies (killed, out
    of memory) becomes a DsglError.
    """
    total = len(plan.images)
    done = 0

    def report(n: int) -> None:
        nonlocal done
        for _ in range(n):
            done += 1
            if progress is not None:
                progress(done, total)

    check_pool_settings(workers, chunk_size)
    if workers is None:
        workers = default_workers() if total >= MIN_POOL_IMAGES else 1
    chunks = chunk_bounds(total, workers, chunk_size)
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
        for spec in plan.images:
            write_one(plan, root, spec)
            report(1)
        return 1
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    jobs = iter(chunks)
    try:
        with _children_ignore_sigint():  # each of the first `workers` submits starts one worker process
            pending: set[Future[int]] = {pool.submit(_write_chunk, sub_plan(plan, a, b), str(root))
                                         for a, b in itertools.islice(jobs, workers)}
        pending |= {pool.submit(_write_chunk, sub_plan(plan, a, b), str(root)) for a, b in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                report(future.result())
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        raise DsglError(
            f"a demo worker process died while writing under {root}: out of memory (retry with fewer workers), "
            "or a script that calls this outside `if __name__ == '__main__':`"
        ) from exc
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return workers
