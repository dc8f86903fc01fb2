"""Generate the built-in demo data set on first use, with a progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dsgl_cli.console import info, stage


@contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """One writer at a time: commands started together must not regenerate under each other."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): generation stays unguarded
        yield
        return
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo(root: Path, seed: int = 0) -> None:
    """Write the synthetic demo set under ``root`` unless a complete copy is already there."""
    from dsgl_cli.data.synthetic import demo_is_complete

    if demo_is_complete(root):
        return
    with _generation_lock(root):
        if not demo_is_complete(root):  # another process may have finished it while we waited
            _generate(root, seed)


def _generate(root: Path, seed: int) -> None:
    from dsgl_cli.data.synthetic import generate_demo

    info(f"Writing the built-in demo data set to {root} (first use)")
    with stage("generate demo", total=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.set_total(total)
            bar.advance(1)

        summary = generate_demo(root, seed=seed, progress=progress)
    counts = summary.counts
    info(f"Demo data set ready: {counts.get('bounding_box_train', 0)} train, {counts.get('query', 0)} query and "
         f"{counts.get('bounding_box_test', 0)} gallery images of {summary.num_train_ids} + {summary.num_test_ids} "
         f"people seen by {summary.num_cameras} cameras ({summary.seconds:.0f}s)")
