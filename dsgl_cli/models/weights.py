"""Pretrained backbone weights: explicit file > local torch hub cache > download (method.md 2, design.md).

ImageNet ResNet weights are torchvision's files; IBN-ResNet weights come only from a file
(the hub cache or an explicit path), never from the network. Offline, the lookup fails at once
with one line that names the file needed and where to put it.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm

from dsgl_cli.errors import DsglError
from dsgl_cli.models.backbones import infer_architecture, to_base_key, to_torchvision_key
from dsgl_cli.models.serialization import safe_load, unwrap_state_dict

OFFLINE_ENV = "DSGL_OFFLINE"
_IGNORED_PREFIXES = ("fc.", "classifier.", "gap.", "feat.", "feat_bn.")

_TORCHVISION_ENUMS = {
    "resnet18": tvm.ResNet18_Weights,
    "resnet34": tvm.ResNet34_Weights,
    "resnet50": tvm.ResNet50_Weights,
    "resnet101": tvm.ResNet101_Weights,
    "resnet152": tvm.ResNet152_Weights,
}
# IBN-Net's ImageNet files: the old release name first, then the GitHub v1.0 release name.
IBN_FILES: dict[str, tuple[str, ...]] = {
    "resnet_ibn50a": ("resnet50_ibn_a.pth.tar", "resnet50_ibn_a-d9d0bb7b.pth"),
    "resnet_ibn101a": ("resnet101_ibn_a.pth.tar", "resnet101_ibn_a-59ea0ac6.pth"),
}


@dataclass
class LoadReport:
    """What loading backbone weights did: file used, tensors copied, keys left aside."""

    source: str
    matched: int
    ignored: list[str] = field(default_factory=list)


def offline() -> bool:
    """True when DSGL_OFFLINE is set to 1/true/yes: never touch the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Where torch hub keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


#: the file names torchvision used for its original ImageNet weights before it renamed them
#: (torchvision < 0.13); the reference trained from these weights, under either name
_LEGACY_V1_FILES = {
    "resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth", "resnet50": "resnet50-19c8e357.pth",
    "resnet101": "resnet101-5d3b4d8f.pth", "resnet152": "resnet152-b121ed2d.pth",
}
#: `--pretrained` values for ImageNet weights: the original (V1) recipe the reference used, or
#: torchvision's later V2 recipe, only when asked for by name
IMAGENET, IMAGENET_V2 = "imagenet", "imagenet-v2"


def imagenet_urls(arch: str, version: str = IMAGENET) -> tuple[str, ...]:
    """torchvision's download URL of ``arch``'s V1 (``imagenet``) or V2 (``imagenet-v2``) weights."""
    enum = _TORCHVISION_ENUMS.get(arch)
    if enum is None:
        return ()
    weights = getattr(enum, "IMAGENET1K_V2" if version == IMAGENET_V2 else "IMAGENET1K_V1", None)
    return (weights.url,) if weights is not None else ()


def candidate_files(arch: str, version: str = IMAGENET) -> tuple[str, ...]:
    """File names accepted in the hub cache for ``arch``: the current name first, then the old one."""
    if arch in IBN_FILES:
        return IBN_FILES[arch]
    names = tuple(Path(urlparse(u).path).name for u in imagenet_urls(arch, version))
    legacy = _LEGACY_V1_FILES.get(arch) if version == IMAGENET else None
    return names + ((legacy,) if legacy else ())


def resolve_imagenet(arch: str, allow_download: bool | None = None, version: str = IMAGENET) -> Path:
    """Local file with ImageNet weights for ``arch``: hub cache, else a download when allowed.

    Only the requested recipe counts: a V2 file in the cache never stands in for the V1 weights the
    reference trained from (the error says so, and how to ask for V2).
    """
    names = candidate_files(arch, version)
    for name in names:
        path = cache_dir() / name
        if path.is_file():
            return path
    allow = (not offline()) if allow_download is None else (allow_download and not offline())
    urls = imagenet_urls(arch, version)
    if allow and urls:
        return _download(urls[0], cache_dir() / names[0], arch)
    message = _missing_message(arch, names, urls, tried_download=False)
    if version == IMAGENET and arch in _TORCHVISION_ENUMS:
        v2 = candidate_files(arch, IMAGENET_V2)
        if any((cache_dir() / n).is_file() for n in v2):
            message += (f"; the cache holds torchvision's later V2 weights ({v2[0]}), which the reference did not "
                        f"use: pass --pretrained {IMAGENET_V2} to train from them anyway")
    raise DsglError(message)


def _missing_message(arch: str, names: tuple[str, ...], urls: tuple[str, ...], tried_download: bool,
                     reason: str = "") -> str:
    """One line: what file is needed, the exact cache path, and the --pretrained none way out."""
    target = cache_dir() / names[0]
    what = "not found" if not tried_download else f"could not be downloaded ({reason})"
    where = f" from {urls[0]}" if urls else ""
    offline_note = f" ({OFFLINE_ENV} is set)" if offline() and urls else ""
    return (
        f"ImageNet weights for {arch} {what}{offline_note}: put {names[0]}{where} at {target}, "
        f"or pass --pretrained PATH, or --pretrained none to start from random init"
    )


def _reachable(host: str, port: int = 443, timeout: float = 4.0) -> bool:
    """Fast connectivity probe run in a thread, so a hanging DNS lookup cannot stall us."""
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result[0]


def _download(url: str, dest: Path, arch: str) -> Path:
    """Download ``url`` into the hub cache (torch writes a temp file and renames it)."""
    names = candidate_files(arch)
    host = urlparse(url).hostname or ""
    if not _reachable(host):
        raise DsglError(_missing_message(arch, names, (url,), True, f"{host} is unreachable"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30.0)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise DsglError(_missing_message(arch, names, (url,), True, type(exc).__name__)) from None
    finally:
        socket.setdefaulttimeout(previous)
    return dest


def resolve_pretrained(arch: str, pretrained: str, allow_download: bool | None = None) -> Path | None:
    """``none`` -> None; ``imagenet`` -> cache/download; anything else is a path that must exist."""
    value = str(pretrained).strip()
    if value.lower() == "none":
        return None
    if value.lower() in (IMAGENET, IMAGENET_V2):
        return resolve_imagenet(arch, allow_download, version=value.lower())
    path = Path(value).expanduser()
    if not path.is_file():
        raise DsglError(
            f"--pretrained '{value}': no such file; use '{IMAGENET}', '{IMAGENET_V2}', 'none' or the path of "
            f"a weights file",
            exit_code=2,
        )
    return path


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, arch: str | None = None) -> LoadReport:
    """Copy backbone weights from a file (torchvision/IBN-Net or ``base.*`` naming) into ``model.base``.

    The classifier ``fc.*`` and any head keys are ignored; the backbone must match exactly,
    otherwise the error gives missing/unexpected/mismatched counts and the likely architecture.
    """
    state = unwrap_state_dict(safe_load(path, what="weights file"), str(path))
    target = {k: v for k, v in model.state_dict().items() if k.startswith("base.")}
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES):
            ignored.append(key)
            continue
        base_key = to_base_key(key)
        if base_key is None or base_key not in target:
            unexpected.append(key)
        else:
            mapped[base_key] = value
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    mismatched = [k for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    if not mapped:
        raise DsglError(f"weights file '{path}' has no tensor that matches a ResNet backbone "
                        f"({len(state)} keys, e.g. '{next(iter(state))}')")
    if missing or unexpected or mismatched:
        likely = infer_architecture(to_torchvision_key(k) for k in state)
        hint = f"; it looks like {likely}" if likely else ""
        name = arch or getattr(getattr(model, "spec", None), "arch", "this model")
        raise DsglError(
            f"weights file '{path}' does not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected "
            f"and {len(mismatched)} mismatched-shape keys{hint}"
        )
    model.load_state_dict(mapped, strict=False)
    return LoadReport(source=str(path), matched=len(mapped), ignored=ignored)


def load_pretrained(model: nn.Module, arch: str, pretrained: str, allow_download: bool | None = None
                    ) -> LoadReport | None:
    """Resolve ``pretrained`` (explicit path > hub cache > download) and load it into the backbone."""
    path = resolve_pretrained(arch, pretrained, allow_download)
    if path is None:
        return None
    return load_backbone_weights(model, path, arch)
