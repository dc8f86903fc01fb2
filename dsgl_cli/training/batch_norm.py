"""The reference's batch statistics in one forward pass (method.md 3.1).

The reference encodes the anchors and, separately, the L_kl partners, each through
nn.DataParallel: over G GPUs a batch is cut into G contiguous chunks, each run by its own replica,
so every BatchNorm layer normalises each chunk with that chunk's own mean and variance, and only
the first replica keeps its running statistics. The anchors' pass and the partners' pass each move
the running statistics once, anchors first.

dsgl runs anchors and partners as one batch of 2B images through one forward (one set of
convolution kernels instead of two) and reproduces those statistics exactly: `GroupBatchNorm`
normalises the 2G chunks separately, and updates the running statistics with chunk 0 (the anchors'
first) and then chunk G (the partners' first), as the two passes did. The convolutions of a 2B
batch round differently from two B batches, so results agree to float rounding
(tests/test_batch_norm.py). The layers keep every parameter and buffer name, so checkpoints are
unchanged; in evaluation they are plain BatchNorm.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GroupBatchNorm(_BatchNorm):
    """A BatchNorm layer that, in training, normalises ``groups`` contiguous chunks of its input
    separately; the chunks listed in ``statistics_from`` update the running statistics, in order."""

    groups: int = 1
    statistics_from: tuple[int, ...] = (0,)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected a 2-D to 5-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.groups == 1 and self.statistics_from == (0,)):
            return super().forward(input)
        if self.momentum is None or not self.track_running_stats:   # cumulative averages need the count first
            outputs = [super().forward(chunk) if i in self.statistics_from else
                       F.batch_norm(chunk, None, None, self.weight, self.bias, True, 0.0, self.eps)
                       for i, chunk in enumerate(input.chunk(self.groups) if self.groups > 1 else (input,))]
            return torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        # as _BatchNorm.forward per chunk, with the batch counter moved once for all of them (one
        # kernel instead of one per chunk; it is only read when momentum is None)
        outputs = []
        for i, chunk in enumerate(input.chunk(self.groups) if self.groups > 1 else (input,)):
            keep = i in self.statistics_from
            outputs.append(F.batch_norm(chunk, self.running_mean if keep else None, self.running_var if keep else None,
                                        self.weight, self.bias, True, self.momentum if keep else 0.0, self.eps))
        if self.statistics_from and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(len(self.statistics_from))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _converted(layer: _BatchNorm) -> GroupBatchNorm:
    new = GroupBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats,
                         device=layer.weight.device if layer.weight is not None else None,
                         dtype=layer.weight.dtype if layer.weight is not None else None)
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias          # the same Parameters (frozen bias included)
    if layer.track_running_stats:
        new.running_mean, new.running_var = layer.running_mean, layer.running_var
        new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def use_group_batch_norm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm layer of ``model`` for a `GroupBatchNorm`, in place (returns the model).

    Parameters and buffers are the same tensors under the same names, so the optimizer, the
    `requires_grad` flags and the state dict carry over. SyncBatchNorm layers stay as they are.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, _BatchNorm) and not isinstance(child, (GroupBatchNorm, nn.SyncBatchNorm)):
            setattr(model, name, _converted(child))
        else:
            use_group_batch_norm(child)
    return model


def set_groups(model: nn.Module, groups: int, statistics_from: tuple[int, ...] = (0,)) -> None:
    """Normalise every training forward of ``model`` in ``groups`` chunks from now on."""
    for layer in model.modules():
        if isinstance(layer, GroupBatchNorm):
            layer.groups, layer.statistics_from = groups, statistics_from


@contextmanager
def grouped(model: nn.Module, groups: int, statistics_from: tuple[int, ...] = (0,)) -> Iterator[None]:
    """`set_groups` for the block only."""
    layers = [m for m in model.modules() if isinstance(m, GroupBatchNorm)]
    saved = [(m.groups, m.statistics_from) for m in layers]
    set_groups(model, groups, statistics_from)
    try:
        yield
    finally:
        for layer, (g, s) in zip(layers, saved):
            layer.groups, layer.statistics_from = g, s


def joint_groups(bn_groups: int, partners: bool) -> tuple[int, tuple[int, ...]]:
    """(chunks, chunks that keep statistics) of one forward over [anchors; partners] (or anchors alone)."""
    if not partners:
        return bn_groups, (0,)
    return 2 * bn_groups, (0, bn_groups)
