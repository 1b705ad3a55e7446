"""Batch-norm statistics of an averaged model: re-estimate them with one pass over data.

An average of snapshots is a new network whose activations need not have the statistics any snapshot
recorded. SeWA averages each snapshot's running statistics with its weights (the same mean of the selected
snapshots); ``update_batch_norm`` replaces them by the statistics of the averaged network itself, as
``torch.optim.swa_utils.update_bn`` does for SWA: every batch-norm layer's running statistics are reset, its
momentum set to ``None`` (a cumulative average over batches), and the data passed forward once in training
mode without gradients; momenta and the training mode are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "update_batch_norm"]


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` that track running statistics: what ``update_batch_norm`` resets."""
    return [
        module for module in model.modules() if isinstance(module, _BatchNorm) and module.track_running_stats
    ]


def update_batch_norm(
    model: nn.Module, batches: Iterable[Any], *, device: str | torch.device | None = None
) -> int:
    """Re-estimate the running statistics of every batch-norm layer of ``model`` on ``batches``.

    The result equals ``torch.optim.swa_utils.update_bn(batches, model)`` for batches of tensors, and the same
    pass accepts the batches a transformers ``Trainer`` uses: a mapping is passed as keyword arguments
    (``model(**batch)``), a list or tuple by its first element, a tensor as it is.

    Args:
        model: The network; its batch-norm layers' running statistics are replaced in place, nothing else.
        batches: One pass of data (a DataLoader or any finite iterable).
        device: Where to move tensors before the forward pass; ``None`` leaves them where they are.

    Returns:
        The number of batches passed forward (0 when ``model`` has no batch-norm layer; it is then not run).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from paperpack.sewa.batch_norm import update_batch_norm
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> update_batch_norm(model, [torch.randn(8, 3) for _ in range(5)])
        5
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = model.training
    model.train()
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                _forward(model, batch, device)
                count += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        model.train(was_training)
    return count


def _forward(model: nn.Module, batch: Any, device: str | torch.device | None) -> None:
    def moved(value: Any) -> Any:
        return value.to(device) if device is not None and isinstance(value, Tensor) else value

    if isinstance(batch, Mapping):
        model(**{key: moved(value) for key, value in batch.items()})
    elif isinstance(batch, list | tuple):
        model(moved(batch[0]))
    else:
        model(moved(batch))
