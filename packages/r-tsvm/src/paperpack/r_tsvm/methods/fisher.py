"""Fisher merging: a parameter-wise average weighted by each model's diagonal Fisher information.

Matena & Raffel, NeurIPS 2022, "Merging Models with Fisher-Weighted Averaging", arXiv:2111.09832.

Each model's parameters are weighted by its diagonal Fisher information F_t (the mean squared gradient of the
log-likelihood), the Laplace-approximation posterior precision:

    θ* = Σ_t w_t F̃_t ⊙ θ_t / Σ_t w_t F̃_t,    F̃_t = max(F_t, ε)

(the paper's Eq. 2 with the model weights λ_t = w_t). The floor ε keeps entries whose Fisher is zero in every
model (frozen or unused parameters) at the plain weighted average instead of 0 / 0. The Fishers come from
:func:`~paperpack.r_tsvm.compute_fisher` or any other source, one tensor per model and parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import FisherConfig
from paperpack.r_tsvm.methods._common import (
    compute_dtype,
    resolve_weights,
    stack_tensors,
    weight_column,
)

__all__ = ["fisher_merge"]


def check_statistics(
    statistics: Sequence[Tensor] | None, count: int, shapes: Sequence[tuple[int, ...]] | None, *, what: str
) -> list[Tensor]:
    """Check per-model statistics: one finite, non-negative-where-needed tensor per model.

    Raises:
        ConfigError: for a missing list, a wrong count or a wrong shape.
        TypeError: for something that is not a tensor.
    """
    if statistics is None:
        raise ConfigError(f"this merge method needs `statistics`: one {what} per model, got None")
    if isinstance(statistics, Tensor) or not isinstance(statistics, Sequence) or len(statistics) != count:
        got = len(statistics) if isinstance(statistics, Sequence) else type(statistics).__name__
        raise ConfigError(f"`statistics` must hold one {what} per model ({count}), got {got}")
    for index, item in enumerate(statistics):
        if not isinstance(item, Tensor):
            raise TypeError(
                f"`statistics[{index}]` must be a torch.Tensor ({what}), got {type(item).__name__}"
            )
        if shapes is not None and tuple(item.shape) != tuple(shapes[index]):
            raise ConfigError(
                f"`statistics[{index}]` ({what}) has shape {list(item.shape)}, expected {list(shapes[index])}"
            )
        if not torch.isfinite(item).all():
            raise ConfigError(f"`statistics[{index}]` ({what}) holds NaN or infinite values")
    return list(statistics)


def fisher_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: FisherConfig | None = None,
    key: str | None = None,
    statistics: Sequence[Tensor] | None = None,
) -> Tensor:
    """Fisher-weighted average of one parameter (``base`` is not used).

    Args:
        base: ignored; accepted so every method has one signature.
        tensors: θ_1..θ_T.
        weights: w_t (the paper's λ_t); None gives 1 for every model.
        config: :class:`FisherConfig`.
        key: the parameter's name (unused).
        statistics: F_1..F_T, the diagonal Fishers, each the shape of the parameter.

    Returns:
        θ*, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> models = [torch.zeros(2), torch.ones(2)]
        >>> fishers = [torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])]
        >>> fisher_merge(None, models, statistics=fishers).tolist()
        [0.75, 0.25]
    """
    del base, key
    config = config or FisherConfig()
    stacked = stack_tensors(tensors, method="fisher")
    fishers = check_statistics(
        statistics, len(tensors), [tuple(t.shape) for t in tensors], what="diagonal Fisher"
    )
    if any(bool((fisher < 0).any()) for fisher in fishers):
        raise ConfigError("`statistics` (diagonal Fishers) must be non-negative")
    dtype = compute_dtype(tensors[0].dtype)
    precision = torch.stack([fisher.to(device=stacked.device, dtype=dtype) for fisher in fishers])
    precision.clamp_(min=config.fisher_floor).mul_(
        weight_column(resolve_weights(weights, len(tensors)), stacked)
    )
    total = precision.sum(dim=0)
    if bool((total == 0).any()):
        raise ConfigError(
            "`weights` cancel out (Σ_t w_t F_t = 0 for some entries); use weights with a nonzero sum"
        )
    return ((precision * stacked).sum(dim=0) / total).to(tensors[0].dtype)
