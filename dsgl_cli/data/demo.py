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
    info(f"Demo data set ready: {summary}")
