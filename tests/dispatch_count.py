"""Counts, over a block of code, the operations that make the host wait for the device, and the
operators dispatched (a CPU stand-in for kernel launches): issue 22's measure of a training iteration.

Two sources are watched. A `TorchDispatchMode` sees every ATen operator: those whose result the host
must read before it can go on (`.item()`, `bool(tensor)`, `nonzero`, boolean-mask indexing, `unique`
and other outputs whose shape depends on the data) count as syncs; every operator that is not a
pure view counts as a dispatch. Host <-> device traffic that never reaches ATen as such (a NumPy
array turned into a tensor, a tensor read back with `.numpy()`, `.tolist()` or `.cpu()`) is
counted by wrapping those entry points while the block runs. On the CPU nothing really waits, so
the counts say what would wait on a GPU. Each count records its source line (the first frame in
`dsgl_cli/`), so a regression names the line that added it.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operators whose result the host must wait for (their output or its shape is data)
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::item", "aten::nonzero", "aten::nonzero_static",
    "aten::masked_select", "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive", "aten::equal", "aten::allclose", "aten::repeat_interleave",
    "aten::bincount", "aten::histc", "aten::_assert_async", "aten::argwhere",
})


def _where() -> str:
    """The innermost frame of the package (or of the test) that led here, as file:line."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "dsgl_cli" in frame.filename or "/benchmarks/" in frame.filename:
            return f"{frame.filename.split('dsgl_cli/')[-1]}:{frame.lineno}"
    return "elsewhere"


def _is_view(func: Any) -> bool:
    schema = func._schema
    return (not schema.is_mutable and bool(schema.returns)
            and all(r.alias_info is not None for r in schema.returns))


class Counts:
    """What one watched block did: sync-forcing operations (by source line) and operators dispatched."""

    def __init__(self) -> None:
        self.syncs: collections.Counter[str] = collections.Counter()
        self.dispatches = 0
        self.by_op: collections.Counter[str] = collections.Counter()

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    def sync(self, what: str) -> None:
        self.syncs[f"{what} @ {_where()}"] += 1


class _Mode(TorchDispatchMode):
    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):   # type: ignore[no-untyped-def]
        name = func._schema.name
        if name in SYNC_OPS:
            self.counts.sync(name)
        elif name == "aten::index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
                if i is not None):
            self.counts.sync("boolean-mask index")
        elif name in ("aten::index_put_", "aten::index_put") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
                if i is not None):
            self.counts.sync("boolean-mask index_put")
        if not _is_view(func):
            self.counts.dispatches += 1
            self.counts.by_op[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs() -> Iterator[Counts]:
    """Count syncs and dispatches of everything the current thread runs inside the block."""
    counts = Counts()
    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, what: str, when: Any = None) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                counts.sync(what)
            return original(*args, **kwargs)

        patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    def from_host(data: Any = None, *args: Any, **kwargs: Any) -> bool:
        return isinstance(data, (np.ndarray, list, tuple, int, float, bool, np.generic))

    wrap(torch, "from_numpy", "upload of a host array")
    wrap(torch, "as_tensor", "upload of a host array", from_host)
    wrap(torch, "tensor", "upload of host data", from_host)
    wrap(torch.Tensor, "numpy", "device-to-host copy (.numpy)")
    wrap(torch.Tensor, "tolist", "device-to-host copy (.tolist)")
    wrap(torch.Tensor, "cpu", "device-to-host copy (.cpu)")
    try:
        with _Mode(counts):
            yield counts
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


def report(counts: Counts, per: float = 1.0, top: int = 12, file: Any = None) -> None:
    """The counts per iteration and the lines that cause them, most first."""
    out = file or sys.stdout
    print(f"syncs per iteration: {counts.total_syncs / per:.2f}; operators dispatched per iteration: "
          f"{counts.dispatches / per:.1f}", file=out)
    for where, n in counts.syncs.most_common(top):
        print(f"  {n / per:6.2f}  {where}", file=out)
