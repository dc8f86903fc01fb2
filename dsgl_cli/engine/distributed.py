"""Process-group glue: one object the trainer asks for ranks, sharding, gathering and wrapping.

A single process is the world of size 1 and every method is the identity; under ``torchrun``
(WORLD_SIZE > 1) it uses torch.distributed (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as tdist
from torch import nn


class Distributed:
    """Rank bookkeeping and the few collectives DSGL needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @classmethod
    def single(cls) -> "Distributed":
        return cls()

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not tdist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            tdist.init_process_group(backend=backend)
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int) -> int:
        """``-b`` is the global batch: each rank draws its share."""
        if global_batch % self.world_size:
            from dsgl_cli.errors import DsglError

            raise DsglError(f"-b/--batch-size {global_batch} must be divisible by the world size {self.world_size}",
                            exit_code=2)
        return global_batch // self.world_size

    def wrap(self, model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
        """DistributedDataParallel around the model when the world is larger than one."""
        if not self.active:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def extract(self, paths: Sequence[str], fn: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
        """Each rank encodes a contiguous shard; the gathered result is in the original order."""
        if not self.active:
            return fn(paths)
        n = len(paths)
        bounds = [n * r // self.world_size for r in range(self.world_size + 1)]
        mine = fn(paths[bounds[self.rank]: bounds[self.rank + 1]]).contiguous()
        size = max(bounds[r + 1] - bounds[r] for r in range(self.world_size))
        padded = torch.zeros(size, mine.shape[1], device=mine.device, dtype=mine.dtype)
        padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        return torch.cat([parts[r][: bounds[r + 1] - bounds[r]] for r in range(self.world_size)])

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """Clustering runs once, on rank 0; the others wait for the broadcast."""
        if not self.active or self.is_main:
            return fn()
        return None

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's object (pseudo labels, a DsglError) on every rank."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Concatenate equal-sized per-rank tensors in rank order (memory updates see all ranks)."""
        if not self.active:
            return tensors
        out = []
        for t in tensors:
            t = t.contiguous()
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            tdist.all_gather(parts, t)
            out.append(torch.cat(parts))
        return tuple(out)

    def shutdown(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()
