"""RegMean: linear layers merged by the closed-form least-squares fit to every model's outputs.

Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models", arXiv:2212.09849.

For a linear layer y = x Wᵀ, RegMean picks the weight that best reproduces every model's outputs on its own
inputs, min_W Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖², whose closed form (the paper's Eq. 3) is

    Wᵀ = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_tᵀ,    G_t = X_tᵀ X_t / N_t,    G̃_t = α G_t + (1 − α) diag(G_t),

where α < 1 shrinks the off-diagonal Gram entries (the paper's regularisation). Model weights w_t multiply
the G̃_t. Parameters without a Gram matrix (biases, norms, embeddings) are averaged, as in the paper.
The Gram matrices come from :func:`~paperpack.r_tsvm.compute_gram` or any other source.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import RegMeanConfig
from paperpack.r_tsvm.methods._common import (
    compute_dtype,
    resolve_weights,
    stack_tensors,
    weight_column,
)
from paperpack.r_tsvm.methods.fisher import check_statistics

__all__ = ["regmean_merge"]


def regmean_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: RegMeanConfig | None = None,
    key: str | None = None,
    statistics: Sequence[Tensor] | None = None,
) -> Tensor:
    """RegMean of one parameter (``base`` is not used).

    Args:
        base: ignored; accepted so every method has one signature.
        tensors: W_1..W_T, each ``(out_features, in_features)`` for a linear weight.
        weights: w_t on each Gram matrix (or on each model in the plain average); None gives 1.
        config: :class:`RegMeanConfig`.
        key: the parameter's name (unused).
        statistics: G_1..G_T, each ``(in_features, in_features)``; None averages the parameter instead.

    Returns:
        The merged weight, in the dtype of ``tensors[0]``.
    """
    del base, key
    config = config or RegMeanConfig()
    stacked = stack_tensors(tensors, method="regmean")
    w = resolve_weights(weights, len(tensors))
    if statistics is None:
        if abs(sum(w)) < 1e-12:
            raise ConfigError(f"`weights` sum to 0 ({w!r}); the plain average of this parameter is undefined")
        return ((stacked * weight_column(w, stacked)).sum(dim=0) / sum(w)).to(tensors[0].dtype)
    if stacked.dim() != 3:
        shape = list(stacked.shape[1:])
        raise TypeError(
            f"RegMean's Gram matrices apply to 2-D linear weights, but this parameter has shape {shape}"
        )
    in_features = stacked.shape[2]
    grams = check_statistics(
        statistics, len(tensors), [(in_features, in_features)] * len(tensors), what="Gram matrix"
    )
    dtype = compute_dtype(tensors[0].dtype)
    gram = torch.stack([g.to(device=stacked.device, dtype=dtype) for g in grams])
    diagonal = torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    gram = config.alpha * gram + (1 - config.alpha) * diagonal
    gram.mul_(weight_column(w, gram))
    lhs = gram.sum(dim=0)
    rhs = (gram @ stacked.mT).sum(dim=0)
    solution: Tensor
    try:
        solution = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # torch.linalg.LinAlgError
        # A singular Σ G̃ (an input feature no model ever saw): the minimum-norm least-squares solution.
        solution = torch.matmul(torch.linalg.pinv(lhs), rhs)
    return solution.mT.to(tensors[0].dtype)
