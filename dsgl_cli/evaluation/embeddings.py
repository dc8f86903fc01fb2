"""Embeddings of image files and the ``.npz`` file that keeps them (``dsgl embed``, ``dsgl search``).

Why a file: a gallery is embedded once and searched many times, and other programs (a tracker, a
notebook) read plain NumPy. The layout, one ``np.savez`` archive, loadable with
``np.load(path)`` (no pickle):

- ``features``     float32 (N, d): one unit-length row per image (method.md 2, eval mode, fp32)
- ``paths``        str (N,): the image files, absolute
- ``cameras``      str (N,): each image's camera where known (its camera folder or manifest row), else ""
- ``feature_dim``  int: d
- ``height``, ``width``  int: the model's input size the images were resized to
- ``arch``, ``pooling``  str: the backbone and pooling of the model
- ``checkpoint``   str: the checkpoint the features came from
- ``model_digest`` str: a digest of the model's weights (another digest: another model)
- ``format``       str: "dsgl-embeddings"; ``version`` int: 1

Preprocessing is the evaluation's and the exported model's: RGB, Pillow bicubic resize to
height x width, ImageNet mean/std; the model runs in float32 (no autocast, no TF32), so these
rows equal what ``dsgl export``'s file gives for the same image (to 1e-4).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dsgl_cli.console import warn
from dsgl_cli.errors import DsglError

FORMAT, VERSION = "dsgl-embeddings", 1
KEYS = ("features", "paths", "cameras", "feature_dim", "height", "width", "arch", "pooling", "checkpoint",
        "model_digest", "format", "version")


@dataclass
class Embeddings:
    """N images' unit features with where they came from (the npz layout above)."""

    features: np.ndarray
    paths: list[str]
    cameras: list[str]
    height: int
    width: int
    arch: str
    pooling: str
    checkpoint: str
    model_digest: str

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


def model_digest(model: nn.Module) -> str:
    """A short digest of every weight and buffer: equal digests mean the same model."""
    digest = hashlib.blake2b(digest_size=12)
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 on GPUs while embedding: its 10-bit mantissa would move rows ~1e-3 off the exported model's."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def embed_images(model: nn.Module, paths: Sequence[str], height: int, width: int, device: torch.device,
                 workers: int = 4, amp: bool = False, batch_size: int = 128,
                 advance: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """float32 (N, d) unit rows of ``paths``, batched on ``device``; a file that fails to decode is one line."""
    from dsgl_cli.data.transforms import test_transform
    from dsgl_cli.features import extract_features

    with full_float32():   # an unreadable file: the loader's one line naming it (data/images.py)
        feats = extract_features(model, list(paths), test_transform(height, width), device,
                                 batch_size=batch_size, workers=workers, amp=amp, advance=advance)
    return feats.float().cpu().numpy().astype(np.float32, copy=False)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def save_embeddings(path: Path, emb: Embeddings) -> Path:
    """Write the npz atomically (a temporary name, then a rename) at exactly ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, features=emb.features.astype(np.float32), paths=np.array(emb.paths, dtype=str),
                     cameras=np.array(emb.cameras, dtype=str), feature_dim=np.int64(emb.feature_dim),
                     height=np.int64(emb.height), width=np.int64(emb.width), arch=np.str_(emb.arch),
                     pooling=np.str_(emb.pooling), checkpoint=np.str_(emb.checkpoint),
                     model_digest=np.str_(emb.model_digest), format=np.str_(FORMAT), version=np.int64(VERSION))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DsglError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_embeddings(path: Path, flag: str) -> Embeddings:
    """Read and check an embeddings npz; anything else (another file, missing keys, bad shapes) is one line."""
    path = Path(path)
    if not path.is_file():
        raise DsglError(f"{flag} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DsglError(f"{flag} {path} is not an embeddings file written by dsgl embed ({_first_line(exc)})") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DsglError(f"{flag} {path} lacks the key(s) {', '.join(missing)} of a dsgl embeddings file; "
                        "write it with dsgl embed (or --save-gallery)")
    if str(arrays["format"]) != FORMAT or int(arrays["version"]) > VERSION:
        raise DsglError(f"{flag} {path} is format {arrays['format']} version {arrays['version']}; this dsgl reads "
                        f"{FORMAT} version {VERSION}")
    feats, paths, cams = arrays["features"], arrays["paths"], arrays["cameras"]
    if feats.ndim != 2 or feats.dtype != np.float32 or paths.shape != (feats.shape[0],) \
            or cams.shape != (feats.shape[0],) or int(arrays["feature_dim"]) != feats.shape[1]:
        raise DsglError(f"{flag} {path}: features {feats.shape} {feats.dtype}, {paths.shape[0]} paths and "
                        f"{cams.shape[0]} cameras do not fit together; write it again with dsgl embed")
    return Embeddings(feats, [str(p) for p in paths], [str(c) for c in cams], int(arrays["height"]),
                      int(arrays["width"]), str(arrays["arch"]), str(arrays["pooling"]), str(arrays["checkpoint"]),
                      str(arrays["model_digest"]))


def check_compatible(emb: Embeddings, feature_dim: int, height: int, width: int, digest: str, flag: str,
                     source: Path) -> Optional[str]:
    """One-line error where features of ``emb`` cannot be compared with this model's; a warning where they
    come from other weights of the same shape (returned, for the caller to print)."""
    if (emb.feature_dim, emb.height, emb.width) != (feature_dim, height, width):
        raise DsglError(f"{flag} {source} holds {emb.feature_dim}-d features of {emb.height}x{emb.width} inputs "
                        f"({emb.arch}), this checkpoint gives {feature_dim}-d at {height}x{width}; embed the gallery "
                        "again with this checkpoint")
    if emb.model_digest != digest:
        return (f"{flag} {source} was embedded with other weights ({emb.checkpoint}); distances between two models' "
                "features mean little: embed it again with this checkpoint")
    return None


#: accepted names of each array in a file to cluster (`read_embeddings`): dsgl embed's first, then common alternatives
EMBEDDING_KEYS = {"features": ("features", "embeddings", "feats"), "cameras": ("cameras", "cams", "camids"),
                  "paths": ("paths",), "ids": ("ids", "pids")}


@dataclass
class EmbeddingsInput:
    """What clustering given embeddings reads: N feature rows, and where known cameras, paths and true ids."""

    features: Any                  # float32 N x d, unit rows
    cameras: Optional[Any] = None  # N camera ids or names
    paths: Optional[list[str]] = None
    ids: Optional[Any] = None      # N true identities (the sweep's quality columns)


def read_embeddings(path: Path, flag: str, need_cameras: bool) -> EmbeddingsInput:
    """An npz of features (dsgl embed's file, or any with a features and a cameras/cams array); one line
    naming the missing key. Rows that are not unit length are normalised, with a warning."""
    if not path.is_file():
        raise DsglError(f"{flag} {path}: no such file", exit_code=2)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DsglError(f"{flag} {path} is not a NumPy .npz file ({first})") from None
    found = {name: next((arrays[k] for k in keys if k in arrays), None) for name, keys in EMBEDDING_KEYS.items()}
    feats = found["features"]
    if feats is None:
        raise DsglError(f"{flag} {path} has no key features (nor embeddings, feats); it holds "
                        f"{', '.join(sorted(arrays)) or 'nothing'}")
    if feats.ndim != 2 or feats.shape[0] == 0 or not np.issubdtype(feats.dtype, np.number):
        raise DsglError(f"{flag} {path}: features must be a non-empty N x d number array, got shape "
                        f"{feats.shape} {feats.dtype}")
    n = feats.shape[0]
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise DsglError(f"{flag} {path}: the features hold NaN or infinite values")
    cams = found["cameras"]
    if cams is not None and cams.dtype.kind in "US" and (cams == "").all():
        cams = None   # dsgl embed writes "" where the camera is unknown
    if need_cameras:
        if cams is None:
            raise DsglError(f"{flag} {path} has no key cameras (nor cams, camids); --jaccard camera-aware "
                            "needs each image's camera", exit_code=2)
        if cams.dtype.kind in "US" and (cams == "").any():
            raise DsglError(f"{flag} {path}: {int((cams == '').sum())} of {n} images have no camera; "
                            "--jaccard camera-aware needs every image's", exit_code=2)
    for name in ("cameras", "paths", "ids"):
        value = cams if name == "cameras" else found[name]
        if value is not None and value.shape != (n,):
            raise DsglError(f"{flag} {path}: {name} has shape {value.shape}, expected ({n},) for {n} features")
    norms = np.linalg.norm(feats, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        warn(f"{flag} {path}: feature rows are not unit length (norms {norms.min():.3g} to {norms.max():.3g}); "
             "normalised")
        feats /= np.maximum(norms, 1e-12)[:, None]
    paths = [str(p) for p in found["paths"]] if found["paths"] is not None else None
    return EmbeddingsInput(feats, cams, paths, found["ids"])
