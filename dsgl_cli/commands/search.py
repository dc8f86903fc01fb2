"""``dsgl search``: rank a gallery for each query image by feature distance (method.md 6), no labels needed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape

from dsgl_cli.commands.common import argument, command, option, resolve, split
from dsgl_cli.commands.embed import Embedder, collect
from dsgl_cli.config import RunConfig
from dsgl_cli.console import console, info, warn
from dsgl_cli.errors import DsglError, check_choice
from dsgl_cli.outputs import check_output, check_output_dir, write_json

if TYPE_CHECKING:
    import numpy as np
    import torch

    from dsgl_cli.evaluation.embeddings import Embeddings

SETTINGS = ("arch", "pooling_type", "height", "width", "workers", "device")   # no --amp: fp32, as exported
PRINTED_QUERIES = 10  # the console shows this many queries' lists; --json holds them all
#: what --exclude-same leaves out of a query's list: its own file (a gallery image used as a query would
#: be its own rank 1), everything from its camera or its tracklet (its neighbouring frames), or nothing
EXCLUDE_SAME = ("file", "camera", "tracklet", "none")
_CHUNK = 1 << 24      # distances computed at once


@dataclass
class QueryResult:
    """One query's ranked gallery: paths, distances (ascending) and cameras ("" unknown), rank 1 first."""

    path: str
    camera: str
    gallery_paths: list[str]
    distances: list[float]
    cameras: list[str]


@dataclass
class SearchReport:
    """What ``dsgl search`` found, for --json."""

    checkpoint: str
    distance: str                 # "squared_euclidean" between unit features, or "reranked" (k-reciprocal)
    top: int
    gallery: str
    gallery_images: int
    saved_gallery: Optional[str] = None
    exclude_same: str = "file"      # what each list leaves out (--exclude-same)
    queries: list[QueryResult] = field(default_factory=list)
    ranked_lists: Optional[list[str]] = None


def is_npz(path: Path) -> bool:
    return path.suffix.lower() == ".npz"


def distances(qf: "torch.Tensor", gf: "torch.Tensor", rerank: bool) -> "np.ndarray":
    """Query x gallery distances: squared Euclidean between unit rows, or re-ranked (k1 20, k2 6, lambda 0.3)."""
    import numpy as np

    from dsgl_cli.evaluation.retrieval import squared_euclidean

    if rerank:
        from dsgl_cli.evaluation.reranking import rerank_features

        return np.asarray(rerank_features(qf, gf), dtype=np.float64)
    step = max(1, _CHUNK // max(1, gf.shape[0]))
    return np.concatenate([squared_euclidean(qf[s:s + step], gf).cpu().numpy()
                           for s in range(0, qf.shape[0], step)]).astype(np.float64)


def excluded(query_paths: list[str], query_cameras: list[str], gal: "Embeddings", same: str) -> "np.ndarray":
    """(queries, gallery) True where --exclude-same leaves the gallery image out of the query's list: the query's
    own file (the same file, however it is named), and with ``camera`` every image of its camera, as re-ID
    evaluation leaves out the same person's images from the same camera (method.md 6). A tracklet is refused
    while no input records one."""
    import numpy as np

    if same == "tracklet":
        raise DsglError("--exclude-same tracklet: neither the query nor the gallery records tracklets (camera folders "
                        "and manifests give cameras); use --exclude-same camera or file", exit_code=2)
    out = np.zeros((len(query_paths), len(gal)), dtype=bool)
    if same == "none":
        return out
    rows: dict[str, list[int]] = {}
    for i, path in enumerate(gal.paths):
        rows.setdefault(os.path.realpath(path), []).append(i)
    for qi, path in enumerate(query_paths):
        out[qi, rows.get(os.path.realpath(path), [])] = True
    if same == "camera":
        unknown = next((p for p, c in zip(query_paths, query_cameras) if not c), None)
        if unknown is not None or not any(gal.cameras):
            where = f"the query {unknown}" if unknown is not None else "the gallery"
            raise DsglError(f"--exclude-same camera: {where} has no camera (cameras come from camera folders or a "
                            "manifest's camera column)", exit_code=2)
        out |= np.array(query_cameras, dtype=object)[:, None] == np.array(gal.cameras, dtype=object)[None, :]
    return out


def rank(dist: "np.ndarray", top: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(indices, distances) of each row's ``top`` nearest, ties broken by gallery order."""
    import numpy as np

    order = np.argsort(dist, axis=1, kind="stable")[:, :top]
    return order, np.take_along_axis(dist, order, axis=1)


def check_query_files(paths: list[str], flag: str) -> None:
    """Every query must decode as an image: a text file named .jpg is one clear line, not a traceback."""
    from dsgl_cli.data.images import check_image

    for path in paths:
        reason = check_image(path)
        if reason is not None:
            raise DsglError(f"{flag} {path} is not an image Pillow can read ({reason})")


def gallery_embeddings(embedder: Embedder, gallery: Path, stored: Optional["Embeddings"],
                       save: Optional[Path]) -> "Embeddings":
    """The gallery's features: read from an npz (checked against this model), or embedded once (and saved)."""
    from dsgl_cli.evaluation.embeddings import check_compatible, save_embeddings

    if stored is not None:
        m = embedder.meta
        note = check_compatible(stored, int(m.out_dim), m.height, m.width, embedder.digest, "--gallery", gallery)
        if note:
            warn(note)
        return stored
    images = collect([gallery], "--gallery")
    emb = embedder(images.paths, images.cameras, "embed gallery")
    if save is not None:
        save_embeddings(save, emb)
        info(f"gallery embeddings ({len(emb):,} images) saved to {save}; reuse them with --gallery {save}")
    return emb


def run_search(checkpoint: Path, cfg: RunConfig, query: Path, gallery: Path, top: int = 10, rerank: bool = False,
               show: Optional[int] = None, show_dir: Optional[Path] = None,
               save_gallery: Optional[Path] = None, exclude_same: str = "file") -> SearchReport:
    """Embed the queries (and the gallery unless it is an npz), rank without what --exclude-same leaves out,
    print, draw."""
    import numpy as np
    import torch

    from dsgl_cli.evaluation.embeddings import load_embeddings

    queries = collect([query], "--query")
    check_query_files(queries.paths, "--query")
    stored = load_embeddings(gallery, "--gallery") if is_npz(gallery) else None   # a bad file fails before the model
    embedder = Embedder(checkpoint, cfg)
    gal = gallery_embeddings(embedder, gallery, stored, save_gallery)
    known = dict(zip(gal.paths, gal.cameras))   # a query that is also a gallery image takes the gallery's camera
    cameras = [cam or known.get(path, "") for path, cam in zip(queries.paths, queries.cameras)]
    left_out = excluded(queries.paths, cameras, gal, exclude_same)   # a refusal comes before any embedding
    q = embedder(queries.paths, cameras, "embed queries")
    qf = torch.from_numpy(q.features).to(embedder.device)
    gf = torch.from_numpy(gal.features).to(embedder.device)
    dist = np.where(left_out, np.inf, distances(qf, gf, rerank))
    order, nearest = rank(dist, min(top, len(gal)))
    report = SearchReport(str(checkpoint), "reranked" if rerank else "squared_euclidean", top, str(gallery), len(gal),
                          str(save_gallery) if save_gallery is not None and not is_npz(gallery) else None,
                          exclude_same=exclude_same)
    for qi, path in enumerate(q.paths):
        kept = np.isfinite(nearest[qi])
        idx = order[qi][kept].tolist()
        report.queries.append(QueryResult(path, q.cameras[qi], [gal.paths[i] for i in idx],
                                          [float(d) for d in nearest[qi][kept]], [gal.cameras[i] for i in idx]))
    print_results(report)
    if show is not None:
        folder = show_dir or Path(checkpoint).parent / "search"
        shown = min([top] + [len(r.gallery_paths) for r in report.queries[:show]])   # never an excluded image
        files = draw_ranked_lists(dist[:show], q, gal, folder, max(1, shown), rerank)
        report.ranked_lists = [str(f) for f in files]
        info(f"{len(files)} ranked list(s) drawn in {folder}")
    return report


def print_results(report: SearchReport) -> None:
    """The first queries' ranked lists, one line per result."""
    kind = "re-ranked distance" if report.distance == "reranked" else "squared Euclidean distance"
    left = {"file": "; the query's own file left out", "camera": "; the query's own camera left out"}
    info(f"{len(report.queries)} quer{'y' if len(report.queries) == 1 else 'ies'} against {report.gallery_images:,} "
         f"gallery images, top {min(report.top, report.gallery_images)} by {kind}{left.get(report.exclude_same, '')}:")
    for res in report.queries[:PRINTED_QUERIES]:
        console.print(f"[bold]{escape(res.path)}[/bold]" + (f"  ({escape(res.camera)})" if res.camera else ""),
                      soft_wrap=True)
        for k, (path, d, cam) in enumerate(zip(res.gallery_paths, res.distances, res.cameras), start=1):
            console.print(escape(f"  {k:>3}. {d:.4f}  {cam or '-':<12} {path}"), soft_wrap=True)
    if len(report.queries) > PRINTED_QUERIES:
        info(f"... {len(report.queries) - PRINTED_QUERIES} more queries (all in --json)")


def draw_ranked_lists(dist: "np.ndarray", q: "Embeddings", gal: "Embeddings", folder: Path, top: int,
                      rerank: bool) -> list[Path]:
    """Pictures of the first queries' lists: neutral frames (nobody's id is known), camera names as captions."""
    import dataclasses

    import numpy as np

    from dsgl_cli.evaluation.ranked_lists import UNKNOWN, draw_ranked_list, plan_ranked_lists

    n = dist.shape[0]
    unknown_q, unknown_g = np.full(n, UNKNOWN), np.full(len(gal), UNKNOWN)
    plans = plan_ranked_lists(dist, q.paths[:n], gal.paths, unknown_q, unknown_g, unknown_q, unknown_g,
                              num_queries=n, topk=top, reranked=rerank)
    gallery_cameras = dict(zip(gal.paths, gal.cameras))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in plans:
        cells = tuple(dataclasses.replace(c, captions=(
            (q.cameras[plan.query_index] if c.slot == 0 else gallery_cameras.get(c.image, "")) or "camera ?",
            *c.captions[1:])) for c in plan.cells)
        path = folder / plan.file_name
        draw_ranked_list(dataclasses.replace(plan, cells=cells)).save(path)
        written.append(path)
    return written


def search(**kwargs: Any) -> None:
    """Rank a gallery for each query image (no labels needed): the nearest first, with distances.

    --query is an image, a folder (recursive) or a .csv manifest; --gallery a folder, a manifest, or a
    .npz written by dsgl embed or --save-gallery (embedded once, searched many times; it must come
    from a model of the same feature size and input size). Distances are squared Euclidean between
    unit features (0 = the same image, 4 = opposite), or k-reciprocal re-ranked with --rerank. --show N
    draws the first N queries' lists into --show-dir (default: <checkpoint folder>/search/); --json
    writes, per query, its path and camera and the ranked gallery paths, distances and cameras
    (cameras as embed finds them; a query file that is also in the gallery takes its camera). A query's
    own file is left out of its list (--exclude-same file); --exclude-same camera leaves out its whole
    camera (its neighbouring frames), as re-ID evaluation does; none keeps everything.

    Example: dsgl search runs/demo/model_best.pth --query person.jpg --gallery gallery.npz --top 10 --show 1
    """
    flags, own = split(kwargs, SETTINGS)
    for flag in ("top", "show"):
        if own[flag] is not None and own[flag] < 1:
            raise DsglError(f"--{flag}: must be a positive number, got {own[flag]}", exit_code=2)
    for flag in ("query", "gallery"):
        if own[flag] is None:
            raise DsglError(f"--{flag} is required", exit_code=2)
    if own["save_gallery"] is not None and is_npz(own["gallery"]):
        raise DsglError("--save-gallery saves a gallery embedded from images; --gallery is already an .npz",
                        exit_code=2)
    inputs = [own["checkpoint"], own["query"], own["gallery"]]
    for flag, key in (("--json", "json_out"), ("--save-gallery", "save_gallery")):
        check_output(own[key], flag, inputs)
    if own["show"]:
        check_output_dir(own["show_dir"] or Path(own["checkpoint"]).parent / "search", "--show-dir")
    same = check_choice(own["exclude_same"], EXCLUDE_SAME, "--exclude-same")
    report = run_search(own["checkpoint"], resolve(flags, own["config"]), own["query"], own["gallery"],
                        top=own["top"], rerank=own["rerank"], show=own["show"], show_dir=own["show_dir"],
                        save_gallery=own["save_gallery"], exclude_same=same)
    if own["json_out"] is not None:
        write_json(own["json_out"], report)


def register(app: typer.Typer) -> None:
    command(app, "search", search, SETTINGS, own=[
        argument("checkpoint", Path, "A dsgl checkpoint or the authors' model_best.pth.tar."),
        option("query", Optional[Path], "--query", "-q", help="Query image, folder or .csv manifest (required)."),
        option("gallery", Optional[Path], "--gallery", "-g",
               help="Gallery folder, .csv manifest, or .npz from dsgl embed (required)."),
        option("top", int, "--top", "-k", default=10, help="Gallery images listed per query."),
        option("rerank", bool, "--rerank", default=False,
               help="Rank by k-reciprocal re-ranked distance (k1=20, k2=6, lambda=0.3)."),
        option("show", Optional[int], "--show", help="Draw the ranked lists of the first N queries."),
        option("show_dir", Optional[Path], "--show-dir",
               help="Where --show writes (default: <checkpoint folder>/search)."),
        option("exclude_same", str, "--exclude-same", default="file",
               help="Leave out of each query's list the gallery images of the same: file (the query itself), "
                    "camera (also every image of its camera), tracklet (where the inputs record tracklets) or "
                    "none."),
        option("save_gallery", Optional[Path], "--save-gallery",
               help="Save the embedded gallery folder as an .npz (the dsgl embed layout) for reuse."),
    ])
