"""dsgl_cli.method.gemm.mm: the oneDNN route gives torch.mm's product and steps aside where it must."""

from __future__ import annotations

import pytest
import torch

from dsgl_cli.method import gemm


def _case(seed: int, m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)


@pytest.mark.parametrize("m,k,n", [(64, 2048, 718), (1436, 2048, 64), (128, 718, 2048), (3, 5, 7)])
def test_mm_equals_the_float64_product(m: int, k: int, n: int) -> None:
    a, b = _case(m + k + n, m, k, n)
    exact = a.double() @ b.double()
    with torch.no_grad():
        got = gemm.mm(a, b)
    assert got.dtype == torch.float32 and got.shape == (m, n) and got.is_contiguous()
    scale = a.abs().double() @ b.abs().double()          # float32 accumulation error bound per entry
    assert ((got.double() - exact).abs() <= 4e-7 * k ** 0.5 * scale + 1e-6).all()


def test_strided_views_as_the_step_passes_them() -> None:
    """bank[C:] (a row slice), f.t() and P as the right factor are what losses.py hands over."""
    g = torch.Generator().manual_seed(3)
    bank, f, grads = torch.randn(40, 96, generator=g), torch.randn(8, 96, generator=g), torch.randn(16, 20, generator=g)
    with torch.no_grad():
        for a, b in ((bank, f.t()), (bank[20:], f.t()), (grads, bank[20:]), (grads, bank[:20])):
            torch.testing.assert_close(gemm.mm(a, b), a @ b, rtol=1e-5, atol=1e-5)


def test_onednn_is_used_on_this_cpu_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product really goes through the oneDNN operator (so the benchmark measures it)."""
    if not gemm.onednn_enabled():
        pytest.skip("this PyTorch build has no usable oneDNN linear operator")
    calls = []
    real = gemm._onednn_linear

    def spy(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, w)

    monkeypatch.setattr(gemm, "_onednn_linear", spy)
    a, b = _case(0, 6, 9, 4)
    with torch.no_grad():
        gemm.mm(a, b)
    assert calls == [(6, 9)]


def test_falls_back_to_torch_mm_where_onednn_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: torch.Tensor) -> torch.Tensor:
        raise AssertionError("oneDNN route taken")

    monkeypatch.setattr(gemm, "_onednn_linear", fail)
    a, b = _case(1, 5, 6, 7)
    # a layout oneDNN runs slowly: a column slice as the right factor, or a transposed left factor
    wide, c = torch.randn(6, 14), torch.randn(7, 3)
    with torch.no_grad():
        torch.testing.assert_close(gemm.mm(a, wide[:, 7:]), a @ wide[:, 7:])
        torch.testing.assert_close(gemm.mm(b.t().contiguous().t(), c), b @ c)
    # under autograd (the route records no graph), float64, and DSGL_CPU_GEMM=mkl
    a_req = a.clone().requires_grad_()
    gemm.mm(a_req, b).sum().backward()
    torch.testing.assert_close(a_req.grad, b.sum(1).expand(5, 6))
    with torch.no_grad():
        torch.testing.assert_close(gemm.mm(a.double(), b.double()), a.double() @ b.double())
        monkeypatch.setenv("DSGL_CPU_GEMM", "mkl")
        gemm.onednn_enabled.cache_clear()
        try:
            torch.testing.assert_close(gemm.mm(a, b), a @ b)
        finally:
            monkeypatch.delenv("DSGL_CPU_GEMM")
            gemm.onednn_enabled.cache_clear()


@pytest.mark.parametrize("broken", ["missing", "wrong"])
def test_a_build_whose_operator_is_missing_or_wrong_uses_torch_mm(monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    def missing(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise AttributeError("no mkldnn._linear_pointwise in this build")

    def wrong(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], w.shape[0])

    monkeypatch.setattr(gemm, "_onednn_linear", missing if broken == "missing" else wrong)
    gemm.onednn_enabled.cache_clear()
    try:
        assert not gemm.onednn_enabled()
        a, b = _case(2, 4, 8, 3)
        with torch.no_grad():
            torch.testing.assert_close(gemm.mm(a, b), a @ b)
    finally:
        gemm.onednn_enabled.cache_clear()
