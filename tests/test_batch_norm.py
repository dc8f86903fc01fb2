"""--bn-groups against what nn.DataParallel does: G deep-copied replicas, each on its own chunk (method.md 3.1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dsgl_cli.models.reid import build_model
from dsgl_cli.training.batch_norm import ChunkBatchNorm, forward_in_groups, use_bn_groups

G, B = 4, 16


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", pooling="gem", features=8)   # BatchNorm2d in the backbone, 1d in the neck
    model.train()
    return model


def _batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def _replicas(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[nn.Module]]:
    """DataParallel by hand: a copy of the model per chunk, outputs gathered in order."""
    replicas = [copy.deepcopy(model) for _ in range(G)]
    out = torch.cat([r(c) for r, c in zip(replicas, x.chunk(G))])
    return out, replicas


def test_outputs_gradients_and_running_statistics_equal_g_replicas_on_their_chunks():
    base = _model()
    x = _batch()
    expected, replicas = _replicas(base, x)
    grouped = use_bn_groups(copy.deepcopy(base))
    got = torch.cat(forward_in_groups(grouped, grouped, x, G))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)   # unit rows: float32 rounding of convs
    # DataParallel sums the replicas' gradients into the module's
    weights = torch.randn(B, got.shape[1], generator=torch.Generator().manual_seed(2))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, p), *copies in zip(grouped.named_parameters(), *(r.parameters() for r in replicas)):
        if p.grad is None:
            assert all(c.grad is None for c in copies), name
            continue
        summed = sum(c.grad for c in copies)
        # a conv weight's gradient sums ~B*H*W products: summed in another order (per replica, then
        # together) float32 differs by about sqrt(terms) ulps of its scale (~2e-6 here), so 2e-5 of it;
        # gradients that cancel to ~0 (GeM's p, the bias before BatchNorm) are sums of O(1) terms, whose
        # rounding is ~1e-7: 1e-6 absolute
        atol = 2e-5 * float(summed.abs().max()) + 1e-6
        torch.testing.assert_close(p.grad, summed, rtol=0, atol=atol, msg=name)
    # running statistics: those of the first replica alone
    for (name, buffer), first in zip(grouped.named_buffers(), replicas[0].buffers()):
        torch.testing.assert_close(buffer, first, rtol=1e-5, atol=1e-6, msg=name)
    plain = copy.deepcopy(base)
    plain(x)
    mean_name, plain_mean = next((n, b) for n, b in plain.named_buffers() if n.endswith("running_mean"))
    assert not torch.allclose(dict(grouped.named_buffers())[mean_name], plain_mean)   # whole-batch stats differ


def test_conversion_keeps_names_parameters_and_evaluation():
    base = _model()
    frozen = [n for n, p in base.named_parameters() if not p.requires_grad]
    params = {n: p for n, p in base.named_parameters()}
    keys = list(base.state_dict())
    grouped = use_bn_groups(base)
    assert list(grouped.state_dict()) == keys                     # checkpoints are unchanged
    assert [n for n, p in grouped.named_parameters() if not p.requires_grad] == frozen   # the neck's frozen bias
    assert all(p is params[n] for n, p in grouped.named_parameters())                    # the optimizer's tensors
    assert sum(isinstance(m, ChunkBatchNorm) for m in grouped.modules()) > 10
    reference = _model().eval()
    grouped.eval()
    torch.testing.assert_close(grouped(_batch()), reference(_batch()))   # evaluation: plain BatchNorm


def test_one_group_is_the_plain_forward_and_a_batch_that_does_not_split_is_refused():
    base = _model()
    x = _batch()
    torch.testing.assert_close(torch.cat(forward_in_groups(base, base, x, 1)), copy.deepcopy(base)(x), rtol=0, atol=0)
    grouped = use_bn_groups(_model())
    with pytest.raises(ValueError, match="does not split into 3"):
        forward_in_groups(grouped, grouped, x, 3)
