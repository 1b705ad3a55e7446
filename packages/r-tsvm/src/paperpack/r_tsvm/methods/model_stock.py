"""Model Stock: move from the base toward the average of the fine-tunes by a ratio set by their angle.

Jang, Yun & Han, 2024, "Model Stock: All we need is just a few fine-tuned models", arXiv:2403.19522.

With N ≥ 2 fine-tuned models and θ the angle between their task vectors τ_t = θ_t − θ_0 (the mean of the
pairwise cosines), the merged weight is the point on the segment from θ_0 to the average
θ_avg = mean_t θ_t that the paper's geometry gives:

    t = N cos θ / (1 + (N − 1) cos θ),    θ_H = t θ_avg + (1 − t) θ_0 = θ_0 + t · mean_t τ_t.

The angle is taken per tensor, or per row with ``filter_wise`` (mergekit's option). Ours where the paper is
silent: a zero task vector has cosine 0 with every other (so t = 0 when one fine-tune left the tensor
untouched), and where 1 + (N − 1) cos θ vanishes (opposite task vectors) the base is kept, as mergekit
does. The method takes no per-model weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import ModelStockConfig
from paperpack.r_tsvm.methods._common import stack_task_vectors

__all__ = ["model_stock_merge", "model_stock_ratio"]


def model_stock_ratio(deltas: Tensor, *, filter_wise: bool = False) -> Tensor:
    """The interpolation ratio t of Model Stock: one per tensor, or one per row with ``filter_wise``.

    Args:
        deltas: the stacked task vectors ``(N, *shape)``, N ≥ 2.
        filter_wise: one ratio per row (first dimension; a 1-D tensor is one row).

    Returns:
        t, shape ``(rows, 1)`` (one row unless ``filter_wise``).
    """
    count = deltas.shape[0]
    rows = deltas.shape[1] if filter_wise and deltas.dim() > 2 else 1
    vectors = deltas.reshape(count, rows, -1)
    norms = torch.linalg.vector_norm(vectors, dim=-1)
    cosines = []
    for i in range(count):
        for j in range(i + 1, count):
            scale = norms[i] * norms[j]
            dot = (vectors[i] * vectors[j]).sum(dim=-1)
            cosines.append(torch.where(scale > 0, dot / torch.where(scale > 0, scale, 1.0), 0.0).clamp(-1, 1))
    cosine = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (count - 1) * cosine
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, 0.0, count * cosine / torch.where(singular, 1.0, denominator))
    return ratio.unsqueeze(-1)


def model_stock_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: ModelStockConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Model Stock of one parameter: θ_0 + t · mean_t τ_t with t from the angle between the task vectors.

    Args:
        base: θ_0 (the pretrained model the fine-tunes share).
        tensors: θ_1..θ_N, at least two.
        weights: must be None (Model Stock weighs the models by their geometry).
        config: :class:`ModelStockConfig`.
        key: the parameter's name (unused).

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> base = torch.zeros(2)
        >>> model_stock_merge(base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]).tolist()
        [0.0, 0.0]
    """
    del key
    config = config or ModelStockConfig()
    if weights is not None:
        raise ConfigError(
            f"model_stock takes no `weights` (its ratio comes from the models), got {weights!r}"
        )
    if len(tensors) < 2:
        raise ConfigError(
            f"model_stock merges at least 2 fine-tuned models besides the base, got {len(tensors)}"
        )
    base_c, deltas = stack_task_vectors(base, tensors, method="model_stock")
    ratio = model_stock_ratio(deltas, filter_wise=config.filter_wise)
    step = deltas.mean(dim=0)
    shaped = step.reshape(ratio.shape[0], -1) * ratio
    return (base_c + shaped.reshape(step.shape)).to(tensors[0].dtype)
