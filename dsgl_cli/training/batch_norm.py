"""The reference's nn.DataParallel batch statistics on any hardware (method.md 3.1).

Under DataParallel over G GPUs the batch is cut into G contiguous chunks, each run by its own replica
of the model, so every BatchNorm layer normalises each chunk with that chunk's own mean and variance,
and only the first replica keeps its running statistics. dsgl does the same in one process: each
chunk is its own forward pass (`forward_in_groups`), and the BatchNorm layers keep running
statistics for the first chunk only (`use_bn_groups` swaps in `ChunkBatchNorm`, which keeps every
parameter and buffer name, so checkpoints are unchanged). As with DataParallel, the gradients of the
chunks add up; with two chunks that sum is the one two processes all-reduce, bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class ChunkBatchNorm(_BatchNorm):
    """A BatchNorm layer whose training batches update the running statistics only while
    ``keep_statistics`` is set (the first chunk); otherwise they are normalised with their own
    statistics and leave the running ones alone. In evaluation it is a plain BatchNorm."""

    keep_statistics: bool = True

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected a 2-D to 5-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_statistics:
            return super().forward(input)
        return F.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _converted(layer: _BatchNorm) -> ChunkBatchNorm:
    new = ChunkBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats,
                         device=layer.weight.device if layer.weight is not None else None,
                         dtype=layer.weight.dtype if layer.weight is not None else None)
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias          # the same Parameters (frozen bias included)
    if layer.track_running_stats:
        new.running_mean, new.running_var = layer.running_mean, layer.running_var
        new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def use_bn_groups(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm layer of ``model`` for a `ChunkBatchNorm`, in place (returns the model).

    Parameters and buffers are the same tensors under the same names, so the optimizer, the
    `requires_grad` flags and the state dict carry over.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, _BatchNorm) and not isinstance(child, (ChunkBatchNorm, nn.SyncBatchNorm)):
            setattr(model, name, _converted(child))
        else:
            use_bn_groups(child)
    return model


@contextmanager
def running_statistics(model: nn.Module, keep: bool) -> Iterator[None]:
    """While the block runs, the model's `ChunkBatchNorm` layers update their running statistics or not."""
    layers = [m for m in model.modules() if isinstance(m, ChunkBatchNorm)]
    for layer in layers:
        layer.keep_statistics = keep
    try:
        yield
    finally:
        for layer in layers:
            layer.keep_statistics = True


def forward_in_groups(first: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, images: torch.Tensor,
                      groups: int) -> list[torch.Tensor]:
    """``model`` on ``groups`` contiguous chunks of ``images``, one forward each: the chunks' outputs.

    The first chunk goes through ``first`` (the DDP-wrapped model under torchrun, whose forward
    prepares the gradient all-reduce) and keeps its BatchNorm statistics; the others go through the
    bare ``model`` and keep none, as DataParallel's other replicas.
    """
    if groups == 1:
        return [first(images)]
    if images.shape[0] % groups:
        raise ValueError(f"a batch of {images.shape[0]} does not split into {groups} equal BatchNorm groups")
    chunks = images.chunk(groups)
    outputs = [first(chunks[0])]
    with running_statistics(model, keep=False):
        outputs.extend(model(chunk) for chunk in chunks[1:])
    return outputs
