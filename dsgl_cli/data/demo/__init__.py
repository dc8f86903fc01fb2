"""The built-in synthetic demo set: planned (plan), drawn (render), written (store) under a lock (lock).

Why it exists: `dsgl train -d demo` must show the whole unsupervised pipeline (method.md sections 1
and 4-6) learning something on a laptop CPU in minutes, with no download. The set is rendered people
in the Market-1501 layout and naming; see docs/demo-data.md.
"""

from __future__ import annotations

from pathlib import Path

from dsgl_cli.console import info, stage


def ensure_demo(root: Path, seed: int = 0) -> None:
    """Write the synthetic demo set under ``root`` unless a complete copy is already there."""
    from dsgl_cli.data.demo.lock import generation_lock
    from dsgl_cli.data.demo.store import demo_is_complete

    if demo_is_complete(root):
        return
    with generation_lock(root):
        if not demo_is_complete(root):  # another process may have finished it while we waited
            _generate(root, seed)


def _generate(root: Path, seed: int) -> None:
    from dsgl_cli.data.demo.store import generate_demo

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
