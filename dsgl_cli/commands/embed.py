"""``dsgl embed``: unit-length features of image folders or files, in one .npz (layout: evaluation/embeddings.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import typer
from rich.markup import escape

from dsgl_cli.commands.common import argument, command, load_for_inference, option, resolve, split
from dsgl_cli.config import RunConfig
from dsgl_cli.console import counted, info, stage, warn
from dsgl_cli.errors import DsglError
from dsgl_cli.outputs import check_output, write_json

if TYPE_CHECKING:
    from dsgl_cli.data.own_layouts import ImageList
    from dsgl_cli.evaluation.embeddings import Embeddings

SETTINGS = ("arch", "pooling_type", "height", "width", "workers", "device")   # no --amp: fp32, as exported


@dataclass
class EmbedReport:
    """What ``dsgl embed`` wrote, for --json."""

    output: str
    images: int
    feature_dim: int
    height: int
    width: int
    arch: str
    pooling: str
    cameras: dict[str, int] = field(default_factory=dict)     # camera ("" unknown) -> images
    skipped: list[dict[str, str]] = field(default_factory=list)


def collect(inputs: Sequence[Path], flag: str) -> "ImageList":
    """The images under ``inputs``; the files skipped (not images) are named in one warning."""
    from dsgl_cli.data.own_layouts import collect_images

    images = collect_images(inputs, flag)
    if images.skipped:
        warn(escape(f"{'' if flag == 'PATH' else flag + ': '}{len(images.skipped)} file(s) skipped, not images: "
                    + ", ".join(p for p, _ in images.skipped[:3]) + (" ..." if len(images.skipped) > 3 else "")))
    return images


class Embedder:
    """A checkpoint's eval-mode model on --device, loaded once, that embeds lists of image files (float32)."""

    def __init__(self, checkpoint: Path, cfg: RunConfig) -> None:
        from dsgl_cli.evaluation.embeddings import model_digest
        from dsgl_cli.runtime import resolve_device

        model, self.meta = load_for_inference(checkpoint, cfg)
        self.checkpoint = checkpoint
        self.digest = model_digest(model)
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.workers = cfg.data.workers

    def __call__(self, paths: list[str], cameras: list[str], what: str = "embed") -> "Embeddings":
        """The images' unit features (batched, with a progress bar) and where they came from."""
        from dsgl_cli.evaluation.embeddings import Embeddings, embed_images

        m = self.meta
        with stage(what, total=len(paths)) as bar:
            feats = embed_images(self.model, paths, m.height, m.width, self.device, workers=self.workers,
                                 amp=False, advance=bar.advance)   # bf16 rows would differ by ~1e-2
        return Embeddings(feats, paths, cameras, m.height, m.width, m.arch, m.pooling, str(self.checkpoint),
                          self.digest)


def embed(**kwargs: Any) -> None:
    """Embed images (files, folders searched recursively, or .csv manifests) into one .npz file.

    The .npz holds: features (float32, N x d, unit rows), paths (N, absolute), cameras (N; for a folder
    holding only sub-folders, the sub-folder below it; a manifest's camera; else ""), feature_dim,
    height, width (the model's input size), arch, pooling, checkpoint, model_digest, format
    ("dsgl-embeddings") and version (1); read it with numpy.load. Images are read as RGB, resized
    bicubic to the model's input size and ImageNet-normalised, as dsgl export's model expects, and
    embedded in float32, so the rows equal that model's output.

    Example: dsgl embed runs/demo/model_best.pth my_cameras --output gallery.npz
    """
    flags, own = split(kwargs, SETTINGS)
    output: Optional[Path] = own["output"]
    if output is None:
        raise DsglError("--output F.npz is required: the file the embeddings are written to", exit_code=2)
    inputs = list(own["inputs"])
    for flag, key in (("--json", "json_out"), ("--output", "output")):
        check_output(own[key], flag, [own["checkpoint"], *inputs])
    report = run_embed(own["checkpoint"], inputs, resolve(flags, own["config"]), output)
    if own["json_out"] is not None:
        write_json(own["json_out"], report)


def run_embed(checkpoint: Path, inputs: Sequence[Path], cfg: RunConfig, output: Path) -> EmbedReport:
    """Embed, write the .npz, say what was written."""
    from dsgl_cli.evaluation.embeddings import save_embeddings

    images = collect(inputs, "PATH")
    emb = Embedder(checkpoint, cfg)(images.paths, images.cameras)
    save_embeddings(output, emb)
    cams = Counter(emb.cameras)
    known = escape(", ".join(f"{c} {n}" for c, n in sorted(cams.items()) if c))
    info(f"{counted(len(emb), 'image')} -> {emb.feature_dim}-d unit features ({emb.arch}/{emb.pooling}, "
         f"{emb.height}x{emb.width}) written to {output}" + (f"; cameras: {known}" if known else ""))
    return EmbedReport(str(output), len(emb), emb.feature_dim, emb.height, emb.width, emb.arch, emb.pooling,
                       dict(sorted(cams.items())), [{"path": p, "reason": why} for p, why in images.skipped])


def register(app: typer.Typer) -> None:
    command(app, "embed", embed, SETTINGS, own=[
        argument("checkpoint", Path, "A dsgl checkpoint or the authors' model_best.pth.tar."),
        argument("inputs", list[Path], "Image files, folders (recursive) or .csv manifests to embed."),
        option("output", Optional[Path], "--output", "-o", help="The .npz file to write (required)."),
    ])
