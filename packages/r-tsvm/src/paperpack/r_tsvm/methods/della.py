"""DELLA: magnitude-aware random dropping (MagPrune), then TIES's sign election and fusion.

Deep et al., 2024, "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
arXiv:2406.11617.

MagPrune: within each row of a task vector the entries are ranked by magnitude, and entry i is kept with a
probability q_i that grows linearly with its rank, from ``density − ε/2`` (smallest) to ``density + ε/2``
(largest), so the mean keep rate is ``density``. Survivors are rescaled by 1 / q_i (the paper's
1 / (1 − p_i)). Then TIES's sign election and disjoint merge ("elect" and "fuse"), and θ = θ_0 + λ τ_m.

Ours where the paper leaves room: ranks are taken per row (per output unit; 1-D tensors are one row), and
``epsilon`` is the full width of the keep-probability range (mergekit's ``epsilon`` is half of it).

``della_linear`` (mergekit's variant) adds the pruned task vectors without the sign election. ``density`` and
``epsilon`` may differ per model (``model_configs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.r_tsvm.config import DellaConfig, DellaLinearConfig
from paperpack.r_tsvm.methods._common import (
    combine_task_vectors,
    generator_for,
    resolve_weights,
    stack_task_vectors,
    task_configs,
)

__all__ = ["della_linear_merge", "della_merge", "magprune", "magprune_probabilities"]


def magprune_probabilities(values: Tensor, density: float, epsilon: float) -> Tensor:
    """Keep probabilities q_i of MagPrune, linear in the magnitude rank within each row.

    Args:
        values: one task vector; 2-D and above are ranked per row (first dimension), 1-D as one row.
        density: the mean keep probability.
        epsilon: the width of the range.

    Returns:
        q, the same shape as ``values``.
    """
    rows = values.reshape(1, -1) if values.dim() < 2 else values.reshape(values.shape[0], -1)
    width = rows.shape[1]
    if width == 1:
        return torch.full_like(values, density)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(values.dtype)
    normalized = ranks / (width - 1)
    return (density + epsilon * (normalized - 0.5)).reshape(values.shape)


def magprune(
    values: Tensor, density: float, epsilon: float, *, rescale: bool, generator: torch.Generator | None
) -> Tensor:
    """MagPrune one task vector: sample a magnitude-aware mask and rescale the survivors by 1 / q_i."""
    probabilities = magprune_probabilities(values, density, epsilon)
    keep = torch.rand(values.shape, generator=generator, dtype=values.dtype).to(values.device)
    kept = values * (keep < probabilities)
    return kept / probabilities if rescale else kept


def _della(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    config: DellaLinearConfig,
    *,
    key: str | None,
    model_configs: Sequence[DellaLinearConfig] | None,
    method: str,
    sign_method: str | None,
) -> Tensor:
    base_c, deltas = stack_task_vectors(base, tensors, method=method)
    w = resolve_weights(weights, len(tensors))
    generator = generator_for(config.seed, key)
    for index, item in enumerate(task_configs(config, model_configs, len(tensors))):
        deltas[index] = magprune(
            deltas[index], item.density, item.epsilon, rescale=config.rescale, generator=generator
        )
    merged = combine_task_vectors(
        base_c, deltas, w, scaling=config.scaling, normalize=config.normalize, sign_method=sign_method
    )
    return merged.to(tensors[0].dtype)


def della_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: DellaConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[DellaConfig] | None = None,
) -> Tensor:
    """DELLA of one parameter: MagPrune each τ_t, elect signs, disjoint merge, scale.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`DellaConfig`.
        key: the parameter's name; with ``config.seed`` it seeds this parameter's masks.
        model_configs: one config per model, for a ``density`` and ``epsilon`` per model.

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.
    """
    config = config or DellaConfig()
    return _della(
        base,
        tensors,
        weights,
        config,
        key=key,
        model_configs=model_configs,
        method="della",
        sign_method=config.majority_sign,
    )


def della_linear_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: DellaLinearConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[DellaLinearConfig] | None = None,
) -> Tensor:
    """MagPrune each τ_t, then add them: θ = θ_0 + λ Σ_t w_t τ̃_t (mergekit's ``della_linear``).

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`DellaLinearConfig`.
        key: the parameter's name; with ``config.seed`` it seeds this parameter's masks.
        model_configs: one config per model, for a ``density`` and ``epsilon`` per model.

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.
    """
    return _della(
        base,
        tensors,
        weights,
        config or DellaLinearConfig(),
        key=key,
        model_configs=model_configs,
        method="della_linear",
        sign_method=None,
    )
