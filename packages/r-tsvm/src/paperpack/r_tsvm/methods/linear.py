"""Linear merging (model soup) and task arithmetic.

- Linear (Wortsman et al., 2022, "Model soups", arXiv:2203.05482): θ = Σ_t w_t θ_t / Σ_t w_t.
- Task arithmetic (Ilharco et al., 2023, "Editing models with task arithmetic", arXiv:2212.04089):
  τ_t = θ_t − θ_0 and θ = θ_0 + λ Σ_t w_t τ_t.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import LinearConfig, TaskArithmeticConfig
from paperpack.r_tsvm.methods._common import (
    check_tensors,
    compute_dtype,
    resolve_weights,
)

__all__ = ["linear_merge", "task_arithmetic_merge"]


def _divisor(weights: Sequence[float], name: str) -> float:
    total = sum(weights)
    if abs(total) < 1e-12:
        raise ConfigError(
            f"`weights` sum to 0 ({list(weights)!r}), so `normalize` cannot divide by Σ w_t; {name}"
        )
    return total


def linear_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: LinearConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Weighted average of the models' tensors, θ = Σ_t w_t θ_t / Σ_t w_t (``base`` is not used).

    Args:
        base: ignored (linear merging needs no base model); accepted so every method has one signature.
        tensors: θ_1..θ_T, one tensor per model, same shape.
        weights: w_t; None gives equal weights.
        config: :class:`LinearConfig`.
        key: the parameter's name (unused).

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> linear_merge(None, [torch.zeros(2), torch.ones(2)], weights=[1.0, 3.0]).tolist()
        [0.75, 0.75]
    """
    del base, key
    config = config or LinearConfig()
    check_tensors(tensors, None, method="linear")
    w = resolve_weights(weights, len(tensors))
    # Accumulate instead of stacking: one float32 buffer, not T copies of the parameter.
    merged = torch.zeros(tensors[0].shape, dtype=compute_dtype(tensors[0].dtype), device=tensors[0].device)
    for weight, tensor in zip(w, tensors, strict=True):
        merged.add_(tensor.to(merged.dtype), alpha=weight)
    if config.normalize:
        merged.div_(_divisor(w, "pass `normalize: false` to merge with weights that sum to zero"))
    return merged.to(tensors[0].dtype)


def task_arithmetic_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: TaskArithmeticConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Task arithmetic: θ = θ_0 + λ Σ_t w_t τ_t with τ_t = θ_t − θ_0 (divided by Σ_t w_t if ``normalize``).

    Args:
        base: θ_0, the base model's tensor.
        tensors: θ_1..θ_T, the fine-tuned models' tensors.
        weights: w_t; None gives 1 for every model.
        config: :class:`TaskArithmeticConfig`.
        key: the parameter's name (unused).

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> base = torch.zeros(2)
        >>> task_arithmetic_merge(base, [torch.ones(2), torch.full((2,), 2.0)]).tolist()
        [3.0, 3.0]
    """
    del key
    config = config or TaskArithmeticConfig()
    if base is None:
        raise ConfigError("merge method 'task_arithmetic' works on task vectors and needs `base`, got None")
    check_tensors(tensors, base, method="task_arithmetic")
    w = resolve_weights(weights, len(tensors))
    dtype = compute_dtype(tensors[0].dtype)
    base_c = base.to(dtype)
    # Accumulate τ_t one at a time instead of stacking them: memory for one task vector, not T.
    merged = torch.zeros_like(base_c)
    for weight, tensor in zip(w, tensors, strict=True):
        merged.add_(tensor.to(dtype) - base_c, alpha=weight)
    if config.normalize:
        merged.div_(_divisor(w, "pass `normalize: false` to sum the task vectors"))
    return merged.mul_(config.scaling).add_(base_c).to(tensors[0].dtype)
