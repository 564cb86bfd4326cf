"""Process-group helpers: one process per device under torchrun (NCCL on GPUs, gloo on CPU),
or a single process without it. Every helper is a no-op when there is one process."""
from __future__ import annotations

import os
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from .config import ConfigError


def dist_env() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> the device of this process (GPU ``local_rank``)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config device=cuda but no CUDA device is available")
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> Tuple[int, int]:
    """Join the process group torchrun described; returns (rank, world_size)."""
    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)
    return rank, world


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` | ``min`` | ``max``) of ``t`` over the ranks."""
    if is_dist():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def all_reduce_grads_(params: List[torch.nn.Parameter], divisor: float) -> None:
    """Sum every gradient over the ranks in one flat buffer, then divide by ``divisor``.

    Used when DDP's own reduction was skipped for a whole accumulation group (``no_sync`` on
    every micro-batch), so that all ranks step with the same gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if is_dist():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
    if divisor != 1.0:
        torch._foreach_mul_(grads, 1.0 / divisor)


def all_gather_objects(obj: Any) -> List[Any]:
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()
