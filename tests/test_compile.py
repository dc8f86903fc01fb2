"""--compile: the DSGL step traces whole (no graph break), gives the eager numbers, and a failing
compiler falls back to eager with one line (issue 22)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from dsgl_cli.method.memory import DSGLMemory
from dsgl_cli.models.reid import build_model
from dsgl_cli.training.batch_norm import joint_groups, set_groups, use_group_batch_norm
from dsgl_cli.training.compiled import Compiled, compile_enabled
from tests.test_step_loop import random_batch, random_epoch


def _memory(mode: str = "DLhybrid") -> tuple[DSGLMemory, tuple]:
    ep = random_epoch(5)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"] if mode == "DLhybrid" else None, ep["centroids"],
                     mode=mode)
    return mem, random_batch(ep, [1, 2, 3, 4])


def _total(mem: DSGLMemory, f, fh, idx, t, irre):
    out = mem.losses(f, idx, t, irre, fh)
    return out["loss_m"] + out["loss_dis"] + out["loss_kl"]


@pytest.mark.parametrize("mode", ["DLhybrid", "CM", "CMhard"])
def test_the_step_has_no_graph_break(mode: str) -> None:
    """Losses and memory update each trace as one graph: nothing in them needs the host."""
    dynamo.reset()
    mem, (idx, t, irre, f, fh) = _memory(mode)
    irre = irre if mode == "DLhybrid" else None
    losses = dynamo.explain(_total)(mem, f.clone().requires_grad_(), fh.clone().requires_grad_(), idx, t, irre)
    assert (losses.graph_count, losses.graph_break_count) == (1, 0), losses.break_reasons
    update = dynamo.explain(lambda: mem.update(f, idx, t))()
    assert (update.graph_count, update.graph_break_count) == (1, 0), update.break_reasons


def test_the_model_with_grouped_batch_norm_has_no_graph_break() -> None:
    dynamo.reset()
    model = use_group_batch_norm(build_model("resnet18", pooling="gem", features=0)).train()
    set_groups(model, *joint_groups(1, partners=True))
    explained = dynamo.explain(model)(torch.randn(8, 3, 32, 16))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_traced_step_gives_the_eager_losses_gradients_and_memory() -> None:
    """The step through dynamo and AOTAutograd (the compiler's front end, without code generation):
    the same numbers as eager, to float32 rounding."""
    dynamo.reset()
    eager, (idx, t, irre, f0, fh0) = _memory()
    traced, _ = _memory()
    results = []
    for mem, run in ((eager, _total), (traced, torch.compile(_total, backend="aot_eager", fullgraph=True))):
        f, fh = f0.clone().requires_grad_(), fh0.clone().requires_grad_()
        total = run(mem, f, fh, idx, t, irre)
        total.backward()
        mem.update(f.detach(), idx, t)
        results.append((total.detach(), f.grad, fh.grad, mem.bank.clone(), mem.group_sums.clone()))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_failing_compiler_falls_back_to_eager_with_one_line() -> None:
    def broken(gm, example_inputs):
        raise RuntimeError("no code generator for this device\nsecond line")

    dynamo.reset()
    notes: list[str] = []
    double = Compiled(lambda x: x * 2, "the test function", True, notes.append, backend=broken)
    x = torch.arange(4.0)
    assert torch.equal(double(x), x * 2) and torch.equal(double(x), x * 2)
    assert not double.active and len(notes) == 1 and "\n" not in notes[0]
    assert "the test function" in notes[0] and "no code generator" in notes[0] and "eagerly" in notes[0]


def test_auto_compiles_on_cuda_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [compile_enabled(c, cpu) for c in ("auto", "on", "off")] == [False, True, False]
    assert [compile_enabled(c, cuda) for c in ("auto", "on", "off")] == [True, True, False]
