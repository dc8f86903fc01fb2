"""BatchNorm over contiguous chunks of the batch: the reference's nn.DataParallel on any hardware (method.md 3.1).

Under DataParallel over G GPUs the batch is cut into G contiguous chunks, each normalised by its own
replica with that chunk's mean and variance, and only the first replica's running statistics are
kept. `use_bn_groups(model, G)` makes every BatchNorm layer of a model do exactly that in one
process, in place: the layers keep their parameter and buffer names, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class ChunkedBatchNorm(_BatchNorm):
    """A BatchNorm layer that, in training, normalises ``groups`` contiguous chunks of its input.

    Chunk 0 goes through the ordinary layer (its statistics update the running ones); the others
    use their own statistics and update nothing. In evaluation it is a plain BatchNorm.
    """

    groups: int

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected a 2-D to 5-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(input)
        chunks = input.chunk(self.groups)
        if len(chunks) != self.groups or chunks[0].shape[0] * self.groups != input.shape[0]:
            raise ValueError(f"a batch of {input.shape[0]} does not split into {self.groups} equal BatchNorm groups")
        first = super().forward(chunks[0])
        rest = [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in chunks[1:]]
        return torch.cat([first, *rest])


def _chunked(layer: _BatchNorm, groups: int) -> ChunkedBatchNorm:
    new = ChunkedBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats,
                           device=layer.weight.device if layer.weight is not None else None,
                           dtype=layer.weight.dtype if layer.weight is not None else None)
    new.groups = groups
    with torch.no_grad():
        if layer.affine:
            new.weight = layer.weight
            new.bias = layer.bias
        if layer.track_running_stats:
            new.running_mean = layer.running_mean
            new.running_var = layer.running_var
            new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def use_bn_groups(model: nn.Module, groups: int) -> nn.Module:
    """Make every BatchNorm layer of ``model`` normalise ``groups`` contiguous chunks (in place; returns model).

    ``groups`` 1 leaves the model as it is. Parameters (the frozen neck bias included) are the same
    objects, so the optimizer and `requires_grad` flags carry over.
    """
    if groups == 1:
        return model
    for name, child in list(model.named_children()):
        if isinstance(child, ChunkedBatchNorm):
            child.groups = groups
        elif isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(model, name, _chunked(child, groups))
        else:
            use_bn_groups(child, groups)
    return model
