"""The pieces of a step that issue 22 changed: fused Adam, and the loss sums read once per refresh."""

from __future__ import annotations

import math

import torch
from torch import nn

from dsgl_cli.training.distributed import Distributed
from dsgl_cli.training.step import STEP_KEYS, LossTotals, adam


def test_fused_adam_is_the_per_parameter_adam_up_to_rounding() -> None:
    """Same model, same gradients, five steps: fused Adam against torch's per-parameter loop."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    models = [base, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))]
    models[1].load_state_dict(base.state_dict())
    fused = adam(list(models[0].parameters()), lr=1e-2, weight_decay=5e-4)
    loop = torch.optim.Adam(models[1].parameters(), lr=1e-2, weight_decay=5e-4, foreach=False, fused=False)
    assert fused.defaults.get("fused") or fused.defaults.get("foreach")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 6, generator=g)
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        # one Adam step moves a weight by about lr; float32 rounding of that is ~1e-9
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_loss_sums_are_read_at_refresh_and_name_the_step_that_diverged() -> None:
    totals = LossTotals({"loss_m": 1.0}, torch.device("cpu"), window=3)
    values = [torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([1.0, 1.0, 1.0, 3.0])]
    for step, v in enumerate(values, start=1):   # a resumed epoch: one step was done before
        totals.add(v, step)
    sums, bad, stop = totals.read(Distributed.single(), stop_requested=False, steps=3)
    assert sums == {"loss_m": 3.0, "loss_dis": 3.0, "loss_kl": 4.0, "loss": 9.0} and bad is None and not stop
    nan = torch.tensor([float("nan"), 1.0, 1.0, float("nan")])
    totals.add(nan, 3)
    totals.add(torch.tensor([1.0, 1.0, 1.0, 3.0]), 4)
    sums, bad, stop = totals.read(Distributed.single(), stop_requested=True, steps=5)
    assert math.isnan(sums["loss"]) and bad == 3 and stop          # 0-based: the fourth step of the epoch
    assert set(sums) == set(STEP_KEYS)
