"""DARE: drop and rescale (Yu et al., 2024, "Language Models are Super Mario", arXiv:2311.03099).

Each task vector entry is dropped with probability p = 1 − ``density`` and the survivors are rescaled by
1 / (1 − p): τ̃_t = (m_t ⊙ τ_t) / (1 − p), m_t ~ Bernoulli(1 − p) (the paper's Eq. 1), so E[τ̃_t] = τ_t.
``dare_linear`` then adds the task vectors (task arithmetic), ``dare_ties`` runs TIES's sign election and
disjoint merge on them.

The paper rescales by 1 / (1 − p); mergekit instead rescales each task vector to its original L1 norm. We
follow the paper. ``density`` may differ per model (``model_configs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.r_tsvm.config import DareConfig, DareTiesConfig
from paperpack.r_tsvm.methods._common import (
    combine_task_vectors,
    generator_for,
    resolve_weights,
    stack_task_vectors,
    task_configs,
)

__all__ = ["dare_linear_merge", "dare_ties_merge", "drop_and_rescale"]


def drop_and_rescale(
    deltas: Tensor,
    density: float | Sequence[float],
    *,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE's Eq. 1 in place: keep each entry with probability ``density``, divide survivors by it.

    Args:
        deltas: the stacked task vectors ``(T, *shape)``.
        density: 1 − p, or one value per task vector.
        rescale: divide by ``density``.
        generator: source of randomness; every task draws its uniforms, whatever its density, so a task's mask
            does not depend on the other tasks' densities.

    Returns:
        ``deltas``, sparsified.
    """
    densities = [density] * deltas.shape[0] if isinstance(density, int | float) else list(density)
    for index, value in enumerate(densities):
        draws = torch.rand(deltas.shape[1:], generator=generator)
        if value >= 1.0:
            continue
        if value <= 0.0:
            deltas[index].zero_()
            continue
        deltas[index].mul_(draws.to(deltas.device) < value)
        if rescale:
            deltas[index].div_(value)
    return deltas


def _dare(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float] | None,
    config: DareConfig,
    *,
    key: str | None,
    model_configs: Sequence[DareConfig] | None,
    method: str,
    sign_method: str | None,
) -> Tensor:
    base_c, deltas = stack_task_vectors(base, tensors, method=method)
    w = resolve_weights(weights, len(tensors))
    drop_and_rescale(
        deltas,
        [c.density for c in task_configs(config, model_configs, len(tensors))],
        rescale=config.rescale,
        generator=generator_for(config.seed, key),
    )
    merged = combine_task_vectors(
        base_c, deltas, w, scaling=config.scaling, normalize=config.normalize, sign_method=sign_method
    )
    return merged.to(tensors[0].dtype)


def dare_linear_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: DareConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[DareConfig] | None = None,
) -> Tensor:
    """DARE then task arithmetic: θ = θ_0 + λ Σ_t w_t τ̃_t.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`DareConfig`.
        key: the parameter's name; with ``config.seed`` it seeds this parameter's masks.
        model_configs: one config per model, for a ``density`` per model.

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> out = dare_linear_merge(torch.zeros(1000), [torch.ones(1000)], config=DareConfig(density=0.5))
        >>> sorted(set(out.tolist()))
        [0.0, 2.0]
    """
    return _dare(
        base,
        tensors,
        weights,
        config or DareConfig(),
        key=key,
        model_configs=model_configs,
        method="dare_linear",
        sign_method=None,
    )


def dare_ties_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: DareTiesConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[DareTiesConfig] | None = None,
) -> Tensor:
    """DARE then TIES's sign election and disjoint merge.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`DareTiesConfig`.
        key: the parameter's name; with ``config.seed`` it seeds this parameter's masks.
        model_configs: one config per model, for a ``density`` per model.

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.
    """
    config = config or DareTiesConfig()
    return _dare(
        base,
        tensors,
        weights,
        config,
        key=key,
        model_configs=model_configs,
        method="dare_ties",
        sign_method=config.majority_sign,
    )
