"""TIES merging: trim, elect sign, disjoint merge.

Yadav et al., NeurIPS 2023, "TIES-Merging: Resolving Interference When Merging Models", arXiv:2306.01708.

Per parameter and per task vector τ_t = θ_t − θ_0:

1. Trim: keep the top-k% entries of τ_t by magnitude (k = ``density``), zero the rest: τ̂_t.
2. Elect: γ = sgn(Σ_t τ̂_t), the sign with the larger total mass per entry.
3. Disjoint merge: τ_m = Σ_t [sgn τ̂_t = γ] τ̂_t / |{t : sgn τ̂_t = γ}| (the mean over agreeing tasks).
4. θ = θ_0 + λ τ_m.

With per-model weights w_t the task vectors are weighted before the election and the mean is weighted
(Σ m_t w_t τ̂_t / Σ m_t w_t), as in mergekit. ``density`` may differ per model (``model_configs``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from paperpack.r_tsvm.config import TiesConfig
from paperpack.r_tsvm.methods._common import (
    combine_task_vectors,
    magnitude_mask,
    resolve_weights,
    stack_task_vectors,
    task_configs,
)

__all__ = ["ties_merge", "trim"]


def trim(deltas: Tensor, density: float | Sequence[float]) -> Tensor:
    """TIES step 1: zero all but the ``density`` fraction of largest-magnitude entries of each τ_t, in place.

    Args:
        deltas: the stacked task vectors, shape ``(T, *shape)``.
        density: k in [0, 1], or one k per task vector.

    Returns:
        ``deltas``, trimmed.
    """
    densities = [density] * deltas.shape[0] if isinstance(density, int | float) else list(density)
    for index, value in enumerate(densities):
        deltas[index].mul_(magnitude_mask(deltas[index], value))
    return deltas


def ties_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: TiesConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[TiesConfig] | None = None,
) -> Tensor:
    """TIES merging of one parameter: trim, elect sign, disjoint merge, scale.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`TiesConfig`.
        key: the parameter's name (unused).
        model_configs: one config per model, for a ``density`` per model; None uses ``config`` for all.

    Returns:
        θ_0 + λ τ_m, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> base = torch.zeros(3)
        >>> models = [torch.tensor([1.0, -2.0, 0.1]), torch.tensor([3.0, 1.0, 0.0])]
        >>> ties_merge(base, models, config=TiesConfig(density=1.0)).tolist()
        [2.0, -2.0, 0.10000000149011612]
    """
    del key
    config = config or TiesConfig()
    base_c, deltas = stack_task_vectors(base, tensors, method="ties")
    w = resolve_weights(weights, len(tensors))
    trim(deltas, [c.density for c in task_configs(config, model_configs, len(tensors))])
    merged = combine_task_vectors(
        base_c,
        deltas,
        w,
        scaling=config.scaling,
        normalize=config.normalize,
        sign_method=config.majority_sign,
    )
    return merged.to(tensors[0].dtype)
