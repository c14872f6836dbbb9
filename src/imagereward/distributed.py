"""Process group set-up from torchrun's environment, and the collectives multi-process jobs use."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from .dtypes import resolve_device


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; a single process has rank 0 of 1."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False
    local_world_size: int = 1  # this job's processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from error


def init_distributed(device: str = "") -> DistContext:
    """Join the process group that torchrun describes (``RANK``, ``WORLD_SIZE``, ...).

    GPU jobs use NCCL and one GPU per local rank; CPU jobs use gloo.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    target = resolve_device(device or None)
    if target.type == "cuda":
        if target.index is None:
            target = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(target)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        # torch._dynamo (imported by the first optimizer) keeps a process group that exists at
        # its import alive after destroy_process_group, with the group's gloo threads; those
        # threads then run into interpreter shutdown, where one can abort the process
        # ("terminate called without an active exception"). Imported first, it holds nothing.
        importlib.import_module("torch._dynamo")  # not "import torch._dynamo": that would make torch local

        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    local_world_size = _env_int("LOCAL_WORLD_SIZE", 1)
    return DistContext(rank, local_rank, world_size, target, owns_group, local_world_size)


def shutdown(context: DistContext, wait_for_others: bool = True) -> None:
    """Leave the process group if :func:`init_distributed` created it.

    After a successful run every process first waits for the others at a barrier, so
    none tears down its connections while another still uses them (rank 0 is often
    still writing files). After a failure it leaves at once: the others may be stuck in
    a collective and are ended by torchrun.
    """
    if context.owns_group and dist.is_initialized():
        try:
            if wait_for_others:
                barrier(context)
        finally:
            dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Element-wise sum over processes (returns ``values`` itself for one process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(value: Any, context: DistContext) -> List[Any]:
    """One picklable value from every process, in rank order."""
    if not context.enabled:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    if context.enabled:
        cuda = context.device.type == "cuda"
        dist.barrier(device_ids=[context.device.index] if cuda else None)
