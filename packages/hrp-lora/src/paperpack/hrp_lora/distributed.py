"""The collectives the preheat needs, on the core's :mod:`paperpack.core.distributed`; no-ops in one process.

The preheat runs before ``Trainer.train()`` or ``accelerator.prepare``, so the model is not wrapped in DDP
yet: gradients are averaged here, and the initialized adapter is broadcast from rank 0 so that every rank
starts the main run from bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.distributed import all_reduce_mean, broadcast_object, is_distributed

__all__ = ["any_rank", "average_gradients", "broadcast_tensors"]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (a collective: every rank must call it)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_mean(torch.tensor([float(flag)], device=device)).item() > 0)


def average_gradients(parameters: Sequence[Tensor]) -> None:
    """Average the gradients of ``parameters`` across ranks in one flat all-reduce (a missing one is 0)."""
    if not is_distributed() or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def broadcast_tensors(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``source``'s values, in place (sent through the CPU)."""
    if not is_distributed():
        return
    values = broadcast_object([tensor.detach().cpu() for tensor in tensors], source=source)
    with torch.no_grad():
        for tensor, value in zip(tensors, values, strict=True):
            tensor.copy_(value)
