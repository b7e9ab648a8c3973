"""Data-parallel helpers for `fit` under `torch.distributed`: the process group, gradient averaging, broadcasts from
rank 0 and errors that every rank raises together.

W is the world size (processes), r a rank. Every function here is a no-op (or the identity) when
`torch.distributed` is not initialised or W = 1, so the single-process code path is unchanged. Collectives run on
tensors on the training device: gloo takes CPU (and CUDA) tensors, nccl CUDA tensors only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["World", "SINGLE_PROCESS", "current_world", "local_rank", "RankFailedError"]

T = TypeVar("T")


class RankFailedError(ValueError):
    """Raised on the ranks that did not fail when another rank raised during a collective step (setup, reading a
    checkpoint): every rank stops with an error instead of waiting for the failed one."""


def local_rank() -> int:
    """The process's rank on its node: `LOCAL_RANK` as torchrun sets it, else the global rank modulo the GPUs."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return rank % count if count else 0


@dataclass(frozen=True)
class World:
    """The process group `fit` trains in: `size` W processes, this one is `rank` r (0 writes files)."""

    size: int = 1
    rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return str(dist.get_backend()) if self.parallel else None

    # ------------------------------------------------------------------------------------ collectives
    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Σ over ranks, in place (and returned)."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(self, parameters: Sequence[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks, in one flat all_reduce. A parameter without
        a gradient on some ranks counts as zero there; one without a gradient on every rank keeps `grad = None`
        (Adam then skips it, as in one process)."""
        if not self.parallel or not parameters:
            return
        present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float64)
        present = self.all_reduce_sum(present.to(parameters[0].device)).tolist()
        used = [p for p, seen in zip(parameters, present) if seen]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in used]
        # one flat buffer per (dtype, device): one all_reduce for the usual model of one dtype
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for index, grad in enumerate(grads):
            groups.setdefault((grad.dtype, grad.device), []).append(index)
        for indices in groups.values():
            flat = self.all_reduce_sum(torch.cat([grads[i].reshape(-1) for i in indices])) / self.size
            offset = 0
            for i in indices:
                n = grads[i].numel()
                used[i].grad = flat[offset : offset + n].view_as(used[i]).clone()
                offset += n

    def broadcast_module(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (what `DistributedDataParallel` does when it wraps)."""
        if not self.parallel:
            return
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def broadcast_rng(self, device: torch.device) -> None:
        """Give every rank rank 0's global CPU RNG state (and the device's, on CUDA)."""
        if not self.parallel:
            return
        transport = device if self.backend == "nccl" else torch.device("cpu")
        state = torch.get_rng_state().to(transport)
        dist.broadcast(state, src=0)
        torch.set_rng_state(state.cpu())
        if device.type == "cuda":
            cuda_state = torch.cuda.get_rng_state(device).to(transport)
            dist.broadcast(cuda_state, src=0)
            torch.cuda.set_rng_state(cuda_state.cpu(), device)

    def from_rank0(self, function: Callable[[], T]) -> T:
        """`function()` run on rank 0 only, its result sent to every rank (pickled). An exception on rank 0 is
        re-raised there and becomes a `RankFailedError` with its message on the other ranks."""
        if not self.parallel:
            return function()
        message: list[Any] = [None]
        error: BaseException | None = None
        if self.writer:
            try:
                message = [("ok", function())]
            except Exception as caught:  # sent to the other ranks, then re-raised
                error = caught
                message = [("error", f"{type(caught).__name__}: {caught}")]
        dist.broadcast_object_list(message, src=0, device=self._object_device())
        if error is not None:
            raise error
        kind, value = message[0]
        if kind == "error":
            raise RankFailedError(f"rank 0 failed: {value}")
        return value

    def agree(self, function: Callable[[], T]) -> T:
        """`function()` on every rank; when it raises on any rank, every rank raises (the failing ones their own
        error, the others a `RankFailedError` naming the first failed rank and its message)."""
        error: BaseException | None = None
        result: Any = None
        try:
            result = function()
        except Exception as caught:
            error = caught
        if not self.parallel:
            if error is not None:
                raise error
            return result
        reports: list[Any] = [None] * self.size
        mine = None if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(reports, mine)
        if error is not None:
            raise error
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if failed:
            rank, report = failed[0]
            raise RankFailedError(f"rank {rank} failed: {report}")
        return result

    def gather_objects(self, value: Any) -> list[Any]:
        """[value of rank 0, ..., value of rank W − 1] on every rank (pickled)."""
        if not self.parallel:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def _object_device(self) -> torch.device | None:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return None


SINGLE_PROCESS = World()


def current_world() -> World:
    """The initialised default process group as a `World`, or the single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return World(size=dist.get_world_size(), rank=dist.get_rank())
