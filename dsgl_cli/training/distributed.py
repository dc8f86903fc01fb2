"""Process-group glue: one object the trainer asks for ranks, sharding, gathering and wrapping.

A single process is the world of size 1 and every method is the identity; under ``torchrun``
(WORLD_SIZE > 1) it uses torch.distributed (NCCL on GPUs, gloo on CPU).

Failure rule: every ``DsglError`` a rank raises after the group is up is raised by *every* rank
at the same point (clustering errors are broadcast, divergence and Ctrl-C are agreed on in
``refresh_status``), so rank 0 alone reports it and no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as tdist
from torch import nn

from dsgl_cli.errors import DsglError

TIMEOUT_ENV = "DSGL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 4 * 3600  # ranks wait at a barrier while rank 0 evaluates or clusters a large set


def _timeout() -> timedelta:
    """How long a rank may wait in a collective (env ``DSGL_DIST_TIMEOUT`` in seconds)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DsglError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds such as 14400", exit_code=2) from None
    return timedelta(seconds=seconds)


class _GatherRows(torch.autograd.Function):
    """all_gather along rows whose backward returns this rank's slice of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        start, stop = ctx.rows
        return grad[start:stop], None, None


class Distributed:
    """Rank bookkeeping and the few collectives DSGL needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @classmethod
    def single(cls) -> "Distributed":
        """The world of one process: every method is the identity."""
        return cls()

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun describes in the environment, if any.

        NCCL when ``device`` is CUDA (each rank on GPU ``LOCAL_RANK``), gloo on CPU. Non-zero
        ranks turn their console quiet so only rank 0 prints.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        from dsgl_cli.console import set_rank

        set_rank(rank)
        if not tdist.is_initialized():
            kwargs: dict[str, Any] = {"timeout": _timeout()}
            if device.type == "cuda":
                if local >= torch.cuda.device_count():
                    raise DsglError(f"rank {rank} wants GPU {local} but this node has {torch.cuda.device_count()}; "
                                    "use --nproc_per_node at most the number of GPUs")
                torch.cuda.set_device(local)
                kwargs["device_id"] = torch.device("cuda", local)
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int) -> int:
        """``-b`` is the global batch: each rank holds a contiguous share of it, as DataParallel's chunks."""
        if global_batch % self.world_size:
            raise DsglError(f"-b/--batch-size {global_batch} must be divisible by the world size {self.world_size} "
                            f"(it is the global batch; each rank holds -b / world size)", exit_code=2)
        return global_batch // self.world_size

    def local_bn_groups(self, bn_groups: Optional[int], global_batch: int) -> int:
        """BatchNorm groups of this rank's share of the batch (method.md 3.1).

        ``--bn-groups`` counts groups over the global batch and defaults to the world size (one group
        per process: the reference's DataParallel on that many GPUs); it must split into whole groups
        per rank, each of at least two images (BatchNorm needs two values per channel).
        """
        groups = self.world_size if bn_groups is None else bn_groups
        if groups % self.world_size:
            raise DsglError(f"--bn-groups {groups} must be a multiple of the world size {self.world_size} "
                            f"(each process normalises whole groups)", exit_code=2)
        if global_batch % groups or global_batch // groups < 2:
            raise DsglError(f"--bn-groups {groups} must split -b/--batch-size {global_batch} into groups of at "
                            f"least 2 images", exit_code=2)
        return groups // self.world_size

    def wrap(self, model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
        """DistributedDataParallel around the model when the world is larger than one.

        ``sync_bn`` converts BatchNorm layers in place (the bare module shares them, so the L_kl
        partner pass through it synchronises too); SyncBatchNorm runs on GPUs only.
        """
        if not self.active:
            if sync_bn:
                from dsgl_cli.console import warn

                warn("--sync-bn has no effect in a single process; it applies under torchrun with several GPUs")
            return model
        if sync_bn:
            if device.type != "cuda":
                raise DsglError("--sync-bn needs CUDA GPUs (SyncBatchNorm does not run on CPU); drop --sync-bn "
                                "for a CPU run", exit_code=2)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        """Every rank waits here (e.g. while rank 0 evaluates)."""
        if self.active:
            tdist.barrier()

    def extract(self, paths: Sequence[Any], fn: Callable[[Sequence[Any]], torch.Tensor]) -> torch.Tensor:
        """Each rank encodes a contiguous shard (of paths, or of row numbers); the gathered result is in
        the original order."""
        if not self.active:
            return fn(paths)
        n = len(paths)
        bounds = [n * r // self.world_size for r in range(self.world_size + 1)]
        mine = fn(paths[bounds[self.rank]: bounds[self.rank + 1]]).contiguous()
        # an empty shard (fewer images than ranks) still has to take part with the right width
        dim = torch.tensor([mine.shape[1] if mine.numel() else 0], device=mine.device)
        tdist.all_reduce(dim, op=tdist.ReduceOp.MAX)
        size = max(bounds[r + 1] - bounds[r] for r in range(self.world_size))
        padded = torch.zeros(size, int(dim), device=mine.device, dtype=torch.float32)
        if mine.numel():
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

    def gather_for_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows in rank order, with gradient to this rank's own rows (the losses see the
        whole batch, as the reference's gathered DataParallel outputs). Every rank then computes the
        same loss; scale it by `loss_scale` before backward so DDP's mean is the one-process sum."""
        if not self.active:
            return x
        return _GatherRows.apply(x, self.rank, self.world_size)

    @property
    def loss_scale(self) -> float:
        """DDP averages gradients over ranks; each rank's part of the gathered loss must count whole."""
        return float(self.world_size)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics everywhere (the reference keeps the first replica's)."""
        if self.active:
            for buffer in model.buffers():
                tdist.broadcast(buffer, src=0)

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

    def refresh_status(self, packed: torch.Tensor) -> tuple[list[float], bool]:
        """(values averaged over ranks, whether any rank asked to stop) from [values..., stop flag]:
        one read of the device (and one all-reduce under torchrun) per progress refresh.

        A NaN or inf on any rank makes the mean non-finite everywhere, so every rank stops at the
        same step instead of one rank leaving the others in the next collective.
        """
        if self.active:
            packed = packed.clone()
            tdist.all_reduce(packed)
        host = packed.tolist()
        return [v / self.world_size for v in host[:-1]], host[-1] > 0

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """Per-rank epoch means (losses) averaged over ranks, for the metrics row rank 0 writes."""
        if not self.active or not values:
            return values
        keys = list(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if tdist.get_backend() == "nccl":
            t = t.to(torch.device("cuda", torch.cuda.current_device()))
        tdist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    @contextmanager
    def identical_memories(self, device: torch.device) -> Iterator[None]:
        """Deterministic kernels while memories are built or updated on CUDA under DDP.

        Their ``index_add_`` uses atomics whose float summation order varies from run to run, so
        ranks fed identical gathered batches would drift apart by rounding; deterministic kernels
        keep every rank's hybrid and instance memories bitwise equal (same GPU model assumed).
        """
        if not self.active or device.type != "cuda":
            yield
            return
        enabled = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)

    def shutdown(self) -> None:
        """Leave the process group (every rank, also after an error)."""
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()
