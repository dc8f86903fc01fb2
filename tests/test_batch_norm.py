"""BatchNorm groups against what the reference does (method.md 3.1): the anchors' pass and then the
partners' pass, each through nn.DataParallel (G deep-copied replicas, each on its own chunk)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dsgl_cli.models.reid import build_model
from dsgl_cli.training.batch_norm import GroupBatchNorm, grouped, joint_groups, use_group_batch_norm

G, B = 4, 16


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", pooling="gem", features=8)   # BatchNorm2d in the backbone, 1d in the neck
    model.train()
    return model


def _batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def _replicas(model: nn.Module, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, list[nn.Module]]:
    """DataParallel by hand: a copy of the model per chunk, outputs gathered in order; the model keeps
    the first replica's running statistics."""
    replicas = [copy.deepcopy(model) for _ in range(groups)]
    out = torch.cat([r(c) for r, c in zip(replicas, x.chunk(groups))])
    model.load_state_dict(replicas[0].state_dict())
    return out, replicas


@pytest.mark.parametrize("groups", [1, G])
def test_one_forward_of_anchors_and_partners_equals_the_two_dataparallel_passes(groups: int):
    """Outputs, gradients and running statistics of one grouped forward over [anchors; partners] equal
    the reference's two passes (anchors, then partners, G replicas each), up to float rounding."""
    base = _model()
    anchors, partners = _batch(1), _batch(3)
    reference = copy.deepcopy(base)
    out_a, rep_a = _replicas(reference, anchors, groups)
    out_p, rep_p = _replicas(reference, partners, groups)
    expected = torch.cat([out_a, out_p])
    model = use_group_batch_norm(copy.deepcopy(base))
    with grouped(model, *joint_groups(groups, partners=True)):
        got = model(torch.cat([anchors, partners]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)   # unit rows: float32 rounding of convs
    # DataParallel sums the replicas' gradients into the module's
    weights = torch.randn(2 * B, got.shape[1], generator=torch.Generator().manual_seed(2))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, p), *copies in zip(model.named_parameters(), *(r.parameters() for r in rep_a + rep_p)):
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
    # running statistics: the anchors' first chunk, then the partners' first chunk
    for (name, buffer), ref_buffer in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, ref_buffer, rtol=1e-5, atol=1e-6, msg=name)
    plain = copy.deepcopy(base)
    plain(torch.cat([anchors, partners]))
    mean_name, plain_mean = next((n, b) for n, b in plain.named_buffers() if n.endswith("running_mean"))
    assert not torch.allclose(dict(model.named_buffers())[mean_name], plain_mean)   # whole-batch stats differ


def test_conversion_keeps_names_parameters_and_evaluation():
    base = _model()
    frozen = [n for n, p in base.named_parameters() if not p.requires_grad]
    params = {n: p for n, p in base.named_parameters()}
    keys = list(base.state_dict())
    converted = use_group_batch_norm(base)
    assert list(converted.state_dict()) == keys                     # checkpoints are unchanged
    assert [n for n, p in converted.named_parameters() if not p.requires_grad] == frozen   # the neck's frozen bias
    assert all(p is params[n] for n, p in converted.named_parameters())                    # the optimizer's tensors
    assert sum(isinstance(m, GroupBatchNorm) for m in converted.modules()) > 10
    reference = _model().eval()
    converted.eval()
    with grouped(converted, 4, (0,)):
        torch.testing.assert_close(converted(_batch()), reference(_batch()))   # evaluation: plain BatchNorm


def test_one_group_is_the_plain_forward_and_no_statistics_leaves_them_alone():
    base = _model()
    x = _batch()
    converted = use_group_batch_norm(copy.deepcopy(base))
    torch.testing.assert_close(converted(x), copy.deepcopy(base)(x), rtol=0, atol=0)
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    with grouped(converted, 1, ()):
        converted(x)
    assert all(torch.equal(v, before[k]) for k, v in converted.state_dict().items())
