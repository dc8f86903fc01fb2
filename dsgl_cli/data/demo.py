"""Generate the built-in demo data set on first use, with a progress bar."""

from __future__ import annotations

from pathlib import Path

from dsgl_cli.console import info, stage


def ensure_demo(root: Path, seed: int = 0) -> None:
    """Write the synthetic demo set under ``root`` unless a complete copy is already there."""
    from dsgl_cli.data.synthetic import demo_is_complete, generate_demo

    if demo_is_complete(root):
        return
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
