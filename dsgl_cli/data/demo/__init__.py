"""The built-in synthetic demo set: sized (sizes), planned (plan, totals), drawn (render), written (writer,
store) under a lock (lock).

Why it exists: `dsgl train -d demo` must show the whole unsupervised pipeline (method.md sections 1
and 4-6) learning something on a laptop CPU in minutes, with no download. The set is rendered people
in the Market-1501 layout and naming; the "market" size has Market-1501's counts, to try the
pipeline at full scale. See docs/demo-data.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dsgl_cli.console import info, stage

if TYPE_CHECKING:
    from dsgl_cli.data.demo.sizes import SizeLike


def ensure_demo(root: Path, seed: int = 0, size: Optional["SizeLike"] = None, workers: Optional[int] = None) -> None:
    """Write the synthetic demo set under ``root`` unless a complete copy is already there.

    With ``size`` None any complete demo set counts and a missing one is written at the default
    size (the behaviour before sizes existed); with a size (a preset name or ``DemoSize``) the
    set there must have that size and ``seed``, else it is written anew.
    """
    from dsgl_cli.data.demo.lock import generation_lock
    from dsgl_cli.data.demo.store import demo_is_complete

    check: dict[str, Any] = {} if size is None else {"seed": seed, "size": size}
    if demo_is_complete(root, **check):
        return
    with generation_lock(root):
        if not demo_is_complete(root, **check):  # another process may have finished it while we waited
            _generate(root, seed, size, workers)


def _generate(root: Path, seed: int, size: Optional["SizeLike"], workers: Optional[int]) -> None:
    from dsgl_cli.data.demo.store import generate_demo

    extra: dict[str, Any] = {}
    if size is not None:
        extra["size"] = size
    if workers is not None:
        extra["workers"] = workers
    info(f"Writing the built-in demo data set to {root} (first use)")
    with stage("generate demo", total=None) as bar:
        def progress(done: int, total: int) -> None:
            if done == 1:
                bar.set_total(total)
            bar.advance(1)

        summary = generate_demo(root, seed=seed, progress=progress, **extra)
    counts = summary.counts
    info(f"Demo data set ready ({summary.preset} size): {counts.get('bounding_box_train', 0)} train, "
         f"{counts.get('query', 0)} query and {counts.get('bounding_box_test', 0)} gallery images of "
         f"{summary.num_train_ids} + {summary.num_test_ids} people seen by {summary.num_cameras} cameras "
         f"({summary.seconds:.0f}s, {summary.workers} process(es))")
