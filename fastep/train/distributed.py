"""Distributed set-up for training: torch.distributed from torchrun's environment, rank queries.

``torchrun --nproc_per_node N -m fastep train ...`` sets ``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` turns that into one process group (NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, Tuple, Union

import torch
import torch.distributed as dist

__all__ = ["dist_info", "is_main_process", "init_distributed", "shutdown_distributed", "broadcast_from_rank0_",
           "average_grads_"]



def dist_info() -> Tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return dist_info()[0] == 0


# Rank 0 alone runs stage 1 (mining + triplet training) and the mapper while the others wait at
# a barrier: give collectives far more than the default 10 minutes.
_DIST_TIMEOUT = datetime.timedelta(hours=6)


def init_distributed(device: Union[str, torch.device, None] = None) -> Tuple[torch.device, int, int]:
    """Initialise torch.distributed from torchrun's environment (no-op without it).

    NCCL when the device is CUDA (each process takes ``cuda:LOCAL_RANK``), gloo on CPU.  Returns
    ``(device, rank, world_size)``.  Without ``WORLD_SIZE``>1 in the environment, nothing is
    initialised and ``device`` is returned as given (default: CUDA if available, else CPU).
    """
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device, 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            dist.init_process_group("nccl", device_id=device, timeout=_DIST_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=_DIST_TIMEOUT)
    elif device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device, dist.get_rank(), dist.get_world_size()



def broadcast_from_rank0_(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite each tensor with rank 0's (in place; nothing in one process)."""
    if dist_info()[1] > 1:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)


def average_grads_(params: Iterable[torch.Tensor]) -> None:
    """Average the ``.grad`` of ``params`` over the ranks with one all_reduce of their
    concatenation (what DistributedDataParallel's buckets do; nothing in one process).  Every
    rank must pass the same parameters with gradients present on the same ones."""
    world = dist_info()[1]
    if world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        k = g.numel()
        g.copy_(flat[offset:offset + k].view(g.shape))
        offset += k


def shutdown_distributed() -> None:
    """Destroy the process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
