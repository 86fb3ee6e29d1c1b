"""One process or many under ``torchrun``: which rank this is, and the few collectives the loop needs.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the processes join one process group
(gloo on CPU, nccl on GPU); alone, every collective here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the ``torchrun`` process group if there is one; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        dev = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, device=dev)


def leave_distributed(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.destroy_process_group()


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank when it is true on one (all ranks stop together, though a time budget
    or a signal may reach one rank first)."""
    if dist.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_to_main(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's ``obj`` in rank order on rank 0 (an empty list elsewhere); every rank must call it."""
    if dist.world == 1:
        return [obj]
    gathered: list[Any] | None = [None] * dist.world if dist.main else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered or []
