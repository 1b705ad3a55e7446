"""The few collective operations the preheat needs, no-ops outside a distributed run.

The preheat runs before ``Trainer.train()`` or ``accelerator.prepare``, so the model is not wrapped in DDP
yet: gradients are averaged here, and the initialized adapter is broadcast from rank 0 so that every rank
starts the main run from bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["any_rank", "average_gradients", "broadcast_tensors", "world_size"]


def world_size() -> int:
    """The number of processes of the default group (1 outside a distributed run)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (a collective: every rank must call it)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_gradients(parameters: Sequence[Tensor]) -> None:
    """Average the gradients of ``parameters`` across ranks in one flat all-reduce (a missing one is 0)."""
    size = world_size()
    if size == 1 or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        count = grad.numel()
        parameter.grad = flat[offset : offset + count].view_as(grad).clone()
        offset += count


def broadcast_tensors(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``source``'s values, in place."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=source)
