"""Model Breadcrumbs: task arithmetic on task vectors with both magnitude tails masked.

Davari & Belilovsky, 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
arXiv:2312.06795.

Per parameter and task vector τ_t, the mask drops both tails of the magnitude distribution: the largest
``gamma`` fraction (outliers) and the smallest entries, so that a ``density`` fraction is kept. The
masked task vectors are then added as in task arithmetic: θ = θ_0 + λ Σ_t w_t (m_t ⊙ τ_t). When
``density + gamma > 1`` fewer outliers are dropped so that the density is kept (as mergekit does).

``breadcrumbs_ties`` (mergekit's variant, not in the paper) follows the masks with TIES's sign election and
disjoint merge. ``density`` and ``gamma`` may differ per model (``model_configs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import BreadcrumbsConfig, BreadcrumbsTiesConfig
from paperpack.r_tsvm.methods._common import (
    combine_task_vectors,
    resolve_weights,
    stack_task_vectors,
    task_configs,
)

__all__ = ["breadcrumbs_mask", "breadcrumbs_merge", "breadcrumbs_ties_merge"]


def breadcrumbs_mask(values: Tensor, density: float, gamma: float) -> Tensor:
    """The Breadcrumbs mask of one task vector: drop the top ``gamma`` and the bottom tail, keep ``density``.

    With n entries sorted by magnitude, entries ranked ``n_bot .. n_bot + n_keep − 1`` (ascending) are kept,
    where ``n_keep = ⌊density · n⌋``, ``n_top = ⌊gamma · n⌋`` and ``n_bot = max(0, n − n_keep − n_top)``.
    Entries tied with a cut value are kept.
    """
    count = values.numel()
    keep = int(density * count)
    if keep == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    bottom = max(0, count - keep - int(gamma * count))
    magnitudes = values.abs().reshape(-1)
    low = torch.kthvalue(magnitudes, bottom + 1).values
    high = torch.kthvalue(magnitudes, bottom + keep).values
    return (values.abs() >= low) & (values.abs() <= high)


def _breadcrumbs(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    config: BreadcrumbsConfig,
    model_configs: Sequence[BreadcrumbsConfig] | None,
    *,
    method: str,
    sign_method: str | None,
) -> Tensor:
    configs = task_configs(config, model_configs, len(tensors))
    for index, item in enumerate(configs):
        if item.density == 0.0:
            where = "" if model_configs is None else f" (model {index})"
            raise ConfigError(f"`density` must be > 0 for {method}{where} (0 keeps nothing), got 0.0")
    base_c, deltas = stack_task_vectors(base, tensors, method=method)
    w = resolve_weights(weights, len(tensors))
    for index, item in enumerate(configs):
        deltas[index].mul_(breadcrumbs_mask(deltas[index], item.density, item.gamma))
    merged = combine_task_vectors(
        base_c, deltas, w, scaling=config.scaling, normalize=config.normalize, sign_method=sign_method
    )
    return merged.to(tensors[0].dtype)


def breadcrumbs_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: BreadcrumbsConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[BreadcrumbsConfig] | None = None,
) -> Tensor:
    """Model Breadcrumbs of one parameter: mask both magnitude tails of each τ_t, then add.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`BreadcrumbsConfig`.
        key: the parameter's name (unused).
        model_configs: one config per model, for a ``density`` and ``gamma`` per model.

    Returns:
        θ_0 + λ Σ_t w_t (m_t ⊙ τ_t), in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> out = breadcrumbs_merge(torch.zeros(10), [torch.arange(10.0)], config=BreadcrumbsConfig(0.5, 0.2))
        >>> out.tolist()
        [0.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0]
    """
    del key
    return _breadcrumbs(
        base,
        tensors,
        weights,
        config or BreadcrumbsConfig(),
        model_configs,
        method="breadcrumbs",
        sign_method=None,
    )


def breadcrumbs_ties_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: BreadcrumbsTiesConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[BreadcrumbsTiesConfig] | None = None,
) -> Tensor:
    """Breadcrumbs masks, then TIES's sign election and disjoint merge (mergekit's ``breadcrumbs_ties``).

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`BreadcrumbsTiesConfig`.
        key: the parameter's name (unused).
        model_configs: one config per model, for a ``density`` and ``gamma`` per model.

    Returns:
        θ_0 + λ τ_m, in the dtype of ``tensors[0]``.
    """
    del key
    config = config or BreadcrumbsTiesConfig()
    return _breadcrumbs(
        base,
        tensors,
        weights,
        config,
        model_configs,
        method="breadcrumbs_ties",
        sign_method=config.majority_sign,
    )
