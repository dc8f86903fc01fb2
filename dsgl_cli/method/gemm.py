"""Dense float32 products for the step's prototype GEMMs, through oneDNN on the CPU.

On the CPU `torch.mm` goes to MKL, which takes a generic path on AMD processors. For the step's
shapes (64-128 rows against C x 2048 prototypes) the oneDNN inner-product kernels that PyTorch also
ships ran 1.4-1.6x faster on the 2-core AMD EPYC machine this project is measured on
(`benchmarks/bench_gemm.py`), and those products are most of a step. oneDNN is reached through the
linear operator PyTorch's compiler uses (`mkldnn._linear_pointwise`, x @ w^T); a build without it,
a tensor on another device or dtype, or `DSGL_CPU_GEMM=mkl` in the environment falls back to
`torch.mm`. A one-time self-check against `torch.mm` guards against a build whose operator
misbehaves.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import Tensor


def _onednn_linear(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


@lru_cache(maxsize=1)
def onednn_enabled() -> bool:
    """Whether CPU float32 products go through oneDNN (checked once per process)."""
    if os.environ.get("DSGL_CPU_GEMM", "onednn").lower() not in ("onednn", "auto", ""):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 70, generator=g), torch.randn(70, 29, generator=g)
    try:
        with torch.no_grad():
            got = _onednn_linear(a, b.t())
    except (AttributeError, RuntimeError):      # no such operator in this build, or it refuses
        return False
    return got.shape == (37, 29) and torch.allclose(got, a @ b, rtol=1e-4, atol=1e-4)


def _use_onednn(a: Tensor, b: Tensor) -> bool:
    """CPU float32 matrices in the layouts the step passes (a row-major, b row- or column-major).

    Other strides (a column slice of a wider matrix, say) can send oneDNN down a path ~1000x slower.
    """
    return (a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32
            and a.dim() == 2 and b.dim() == 2 and a.is_contiguous()
            and (b.is_contiguous() or b.t().is_contiguous())
            and not torch.is_grad_enabled() and onednn_enabled())


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b (2-D). Outside autograd only: the oneDNN path records no graph. Under torch.compile it is
    torch.mm, whose kernel the compiler picks itself."""
    if torch.compiler.is_compiling():
        return torch.mm(a, b)
    if _use_onednn(a, b):
        return _onednn_linear(a, b.t())
    return torch.mm(a, b)
