"""Process-group helpers that work the same in one process and under ``accelerate launch`` / ``torchrun``.

Every function is safe to call without a process group: one process is rank 0 of a world of 1, a barrier
returns at once, a mean is the value itself. Under a launcher, before the process group exists (a collator or
a dataset built before the Trainer), :func:`rank` and :func:`world_size` read the launcher's ``RANK`` and
``WORLD_SIZE`` variables.

Examples:
    >>> import torch
    >>> from paperpack.core.distributed import all_reduce_mean, is_main_process, rank, world_size
    >>> rank(), world_size(), is_main_process()
    (0, 1, True)
    >>> all_reduce_mean(torch.tensor([1.0, 3.0]))
    tensor([1., 3.])
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch

from paperpack.core.errors import ConfigError

__all__ = [
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "check_same_across_ranks",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "world_size",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _environment(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def rank() -> int:
    """This process's global rank: the process group's, else the launcher's ``RANK``, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return _environment("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (the launcher's ``LOCAL_RANK``, else 0)."""
    return _environment("LOCAL_RANK", 0)


def world_size() -> int:
    """The number of processes: the process group's, else the launcher's ``WORLD_SIZE``, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return _environment("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """Whether this is rank 0, the process that writes files and logs results."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (returns at once in one process)."""
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_mean(tensor: torch.Tensor, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The mean of ``tensor`` over all processes, as a new tensor on ``tensor``'s device and dtype.

    Args:
        tensor: a floating tensor of the same shape on every process.
        device: where the collective runs when it differs from ``tensor``'s device (NCCL needs CUDA tensors;
            gloo takes CPU ones); the result comes back to ``tensor``'s device.

    Raises:
        TypeError: for a tensor that is not floating point (a mean of integers is not an integer).
    """
    if not tensor.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating tensor, got {tensor.dtype}")
    if not is_distributed():
        return tensor.clone()
    buffer = tensor.detach().to(device if device is not None else tensor.device, copy=True)
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    return (buffer / torch.distributed.get_world_size()).to(tensor.device)


def broadcast_object(value: T, *, source: int = 0) -> T:
    """``value`` as process ``source`` holds it, on every process (any picklable object).

    Only for small values (a seed, a list of names): the object is pickled and sent whole.
    """
    if not is_distributed():
        return value
    holder: list[Any] = [value]
    torch.distributed.broadcast_object_list(holder, src=source)
    result: T = holder[0]
    return result


def check_same_across_ranks(name: str, value: Any) -> None:
    """Refuse a value that differs between processes (a seed that must agree so that random draws do).

    Raises:
        ConfigError: on every process whose value differs from rank 0's, naming both values.
    """
    expected = broadcast_object(value)
    if expected != value:
        raise ConfigError(
            f"`{name}` must be the same on every process, got {value!r} on rank {rank()} "
            f"and {expected!r} on rank 0"
        )
