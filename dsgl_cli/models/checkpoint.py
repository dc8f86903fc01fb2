"""Checkpoint I/O: atomic saves in dsgl's format, safe loads of ours and of the authors' format (method.md 2).

dsgl format (everything survives ``torch.load(weights_only=True)``)::

    {"format": "dsgl", "format_version": 1, "state_dict": {...},
     "model": {arch, pooling, features, dropout, height, width},
     "epoch": int, "metrics": {...}, "best_mAP": float,
     optional "optimizer", "scheduler", "rng", "extra"}

The authors' format is ``{'state_dict', 'epoch', 'best_mAP'}`` with ``module.``-prefixed keys.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsgl_cli.errors import DsglError, StopRequested, WriteFailed, check_choice, os_error_message
from dsgl_cli.models import ARCHITECTURES, POOLINGS
from dsgl_cli.models.backbones import infer_architecture
from dsgl_cli.models.reid import ReIDModel, build_model
from dsgl_cli.models.serialization import is_state_dict, safe_load, strip_prefix

FORMAT = "dsgl"
FORMAT_VERSION = 1
DEFAULT_SIZE = (256, 128)


# ----------------------------------------------------------------------------- writing


def _plain(obj: Any, where: str) -> Any:
    """Convert numpy values to tensors/Python scalars and reject anything weights_only would refuse."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (torch.dtype, torch.device)):
        return obj
    raise TypeError(f"checkpoint entry {where} is a {type(obj).__name__}, which weights_only loading refuses")


def make_checkpoint(
    model: ReIDModel,
    *,
    epoch: int,
    height: int = DEFAULT_SIZE[0],
    width: int = DEFAULT_SIZE[1],
    metrics: Mapping[str, Any] | None = None,
    best_mAP: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a dsgl-format payload for ``save_checkpoint`` (weights copied to CPU)."""
    spec = model.spec
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": {"arch": spec.arch, "pooling": spec.pooling, "features": spec.features,
                  "dropout": spec.dropout, "height": int(height), "width": int(width)},
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "best_mAP": None if best_mAP is None else float(best_mAP),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if rng is not None:
        payload["rng"] = dict(rng)
    if extra is not None:
        payload["extra"] = dict(extra)
    return payload


#: what only a resumable checkpoint needs; ``model_best.pth`` and ``model_init.pth`` leave it out
RESUME_ONLY = ("optimizer", "scheduler", "rng")


def model_only(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a model to ship or embed with: weights, description, epoch, metrics and the run's settings
    (``extra.config``, which ``dsgl cluster`` reads), without the optimizer state, which made a ResNet-50
    ``model_best.pth`` 134 MB for its 44 MB of weights, nor the random state or an epoch's resume state."""
    kept = {k: v for k, v in payload.items() if k not in RESUME_ONLY and k != "extra"}
    config = (payload.get("extra") or {}).get("config")
    if config is not None:
        kept["extra"] = {"config": config}
    return kept


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` atomically: temp file in the same folder, fsync, os.replace (no torn checkpoints).

    The temporary file is gone on every way out: an error removes it; Ctrl-C or SIGTERM while writing
    waits for the write to finish (a second signal abandons it), then takes its usual effect. A failed
    write (a full disk) raises WriteFailed and leaves the file at ``path`` as it was. Only SIGKILL or a
    power cut leaves a temporary (`TEMPORARY` names them), which the next run in that folder removes.
    """
    path = Path(path)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **_plain(dict(payload), "payload")}
    tmp_name = temporary_path(path)
    created = False
    with _signals_wait_for_write() as received:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # os.open (not mkstemp) so the file gets the usual umask permissions, not 0600.
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            created = True
            with os.fdopen(fd, "wb") as handle:
                torch.save(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException as exc:
            if created:
                _remove_quietly(tmp_name)
            if len(received) > 1:   # abandoned: torch may have wrapped the interrupt in a RuntimeError
                raise StopRequested(received[0]) from None
            cause = _os_error(exc)
            if cause is None:
                raise
            kept = "; the previous checkpoint there is intact" if path.exists() else ""
            raise WriteFailed(f"cannot write checkpoint {path}: {os_error_message(cause, paths=False)}{kept}") from exc
    _fsync_dir(path.parent)
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The file-system error behind a failed write (torch may wrap the OSError of its file in a RuntimeError)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = (seen.__cause__ or seen.__context__) if isinstance(seen, RuntimeError) else None
    return seen


#: the signals a checkpoint write holds back: an interrupt raised inside torch.save's C++ writer
#: surfaces as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos" (seen in a probe)
HELD: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_wait_for_write() -> Iterator[list[int]]:
    """Ctrl-C or SIGTERM inside waits for the block's end (a second one abandons it); then the first takes
    its effect. Yields the signals received.

    Only the main thread can handle signals; elsewhere, and where a signal is ignored or handled outside
    Python, nothing changes.
    """
    received: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1:
            raise StopRequested(received[0])

    previous: dict[int, Any] = {}
    for held in HELD:
        handler = signal.getsignal(held)
        if handler in (signal.SIG_IGN, None):
            continue
        try:
            signal.signal(held, hold)
        except ValueError:   # not the main thread
            break
        previous[held] = handler
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:   # the caller's handler acts on it now (an abandoned write raises in any case)
            signal.raise_signal(received[0])


#: the names of save_checkpoint's temporary files, ``temporary_path``'s: .<target>.<pid>.<8 hex digits>.tmp
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]*)\.[0-9a-f]{8}\.tmp")


def temporary_path(path: Path) -> Path:
    """Where save_checkpoint writes before the rename: beside ``path``, named by this process and at random."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _remove_quietly(path: Path) -> None:
    """Delete a temporary file; a failure to delete it must not hide the first error."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows fsync on a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA when present) RNG states as tensors/ints (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state``; CUDA states are restored only when the device count matches."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), int(nps["pos"]),
                         int(nps["has_gauss"]), float(nps["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


# ----------------------------------------------------------------------------- reading


@dataclass
class CheckpointInfo:
    """What a loaded checkpoint describes: its model, input size and training progress."""

    path: str
    format: str                      # "dsgl" or "authors"
    arch: str
    pooling: str
    features: int
    out_dim: int
    dropout: float
    height: int
    width: int
    epoch: int | None
    best_mAP: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True; any unreadable file becomes a one-line DsglError."""
    obj = safe_load(path, what="checkpoint", map_location=map_location)
    if is_state_dict(obj):
        return {"state_dict": obj}
    if not isinstance(obj, Mapping):
        raise DsglError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a checkpoint dictionary")
    obj = dict(obj)
    if obj.get("format") == FORMAT and int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise DsglError(f"checkpoint '{path}' uses format version {obj['format_version']}, newer than this "
                        f"dsgl understands ({FORMAT_VERSION}); upgrade dsgl")
    if "state_dict" not in obj or not is_state_dict(obj["state_dict"]):
        raise DsglError(f"checkpoint '{path}' has no 'state_dict' of tensors; keys present: "
                        f"{', '.join(map(str, list(obj)[:8]))}")
    return obj


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    """Strict load that explains a misfit: missing/unexpected/mismatched counts and the likely arch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        likely = infer_architecture(state)
        hint = f"; it looks like {likely} (pass --arch {likely})" if likely and likely != arch else ""
        example = (missing or unexpected or mismatched)[0]
        raise DsglError(
            f"checkpoint '{path}' does not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected "
            f"and {len(mismatched)} mismatched-shape keys (e.g. '{example}'){hint}"
        )
    model.load_state_dict(state, strict=False)


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    pooling: str | None = None,
    features: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> tuple[ReIDModel, CheckpointInfo]:
    """Rebuild the eval-mode model stored in a dsgl or authors'-format checkpoint (on CPU).

    The file describes itself: where a user-given arch/pooling/features contradicts it, the
    file wins and the returned info's ``warnings`` say so.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    state = strip_prefix(ckpt["state_dict"])
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    warnings_: list[str] = []
    notes: list[str] = []
    ours = ckpt.get("format") == FORMAT
    stored = dict(ckpt.get("model") or {}) if ours else {}

    arch = check_choice(arch, ARCHITECTURES, "architecture") if arch is not None else None
    pooling = check_choice(pooling, POOLINGS, "pooling") if pooling is not None else None

    # architecture
    if ours:
        final_arch = stored["arch"]
        if arch is not None and arch != final_arch:
            warnings_.append(f"--arch {arch} ignored: the checkpoint was trained as {final_arch}")
    elif arch is not None:
        final_arch = arch
    else:
        likely = infer_architecture(state)
        final_arch = likely or "resnet50"
        how = "inferred from its keys" if likely else "assumed (the keys match no known layout)"
        notes.append(f"the authors' checkpoint format does not store the architecture: {final_arch} "
                     f"{how}; pass --arch to choose")

    # pooling: GeM leaves its exponent gap.p in the state dict; avg and max leave nothing.
    has_p = "gap.p" in state
    if ours:
        final_pooling = stored["pooling"]
    elif has_p:
        final_pooling = "gem"
    else:
        final_pooling = pooling if pooling in ("avg", "max") else "avg"
        if pooling is None:
            notes.append("no GeM exponent (gap.p) in the checkpoint: using avg pooling; pass --pooling-type max "
                         "if it was trained with max pooling")
    if pooling is not None and pooling != final_pooling:
        why = "it holds a GeM exponent gap.p" if has_p else "it holds no GeM exponent gap.p"
        warnings_.append(f"--pooling-type {pooling} contradicts the checkpoint ({why}); using {final_pooling}")

    # embedding size: feat.weight is (features, backbone channels)
    final_features = int(state["feat.weight"].shape[0]) if "feat.weight" in state else 0
    if ours and int(stored.get("features", final_features)) != final_features:
        warnings_.append("the checkpoint's stored features value disagrees with its weights; "
                         f"using {final_features} from feat.weight")
    if features is not None and int(features) != final_features:
        warnings_.append(f"--features {features} contradicts the checkpoint (embedding size {final_features}); "
                         f"using {final_features}")

    dropout = float(stored.get("dropout", 0.0)) if ours else 0.0
    final_h = int(height) if height is not None else int(stored.get("height", DEFAULT_SIZE[0]))
    final_w = int(width) if width is not None else int(stored.get("width", DEFAULT_SIZE[1]))
    if final_h <= 0 or final_w <= 0:
        raise DsglError(f"--height/--width must be positive, got {final_h}x{final_w}", exit_code=2)

    model = build_model(final_arch, pooling=final_pooling, features=final_features, dropout=dropout)
    _load_into(model, state, final_arch, path)
    model.eval()
    best = ckpt.get("best_mAP")
    return model, CheckpointInfo(
        path=str(path), format=FORMAT if ours else "authors", arch=final_arch, pooling=final_pooling,
        features=final_features, out_dim=model.out_dim, dropout=dropout, height=final_h, width=final_w,
        epoch=None if ckpt.get("epoch") is None else int(ckpt["epoch"]),
        best_mAP=None if best is None else float(best), metrics=dict(ckpt.get("metrics") or {}),
        warnings=warnings_, notes=notes,
    )
