"""Consensus merging with TALL masks: keep the weights that at least k tasks rely on.

Wang et al., 2024, "Localizing Task Information for Improved Model Merging and Compression", arXiv:2405.07813.

With the multi-task vector τ_MTL = Σ_t w_t τ_t, the TALL mask of task t keeps the entries where that task
matters relative to the others (the paper's Eq. 3):

    m_t = 1{ |w_t τ_t| ≥ λ_t · |τ_MTL − w_t τ_t| }

The consensus mask keeps entries that at least k tasks find relevant, m = 1{Σ_t m_t ≥ k} (k = 2 in the
paper, dropping "selfish" weights used by one task only and "catastrophic" weights used by none), and the
merged model is θ = θ_0 + α (m ⊙ τ_MTL).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import ConsensusConfig
from paperpack.r_tsvm.methods._common import (
    resolve_weights,
    stack_task_vectors,
    weight_column,
)

__all__ = ["consensus_merge", "tall_masks"]


def tall_masks(weighted: Tensor, tall_lambda: float) -> Tensor:
    """TALL masks m_t = 1{|w_t τ_t| ≥ λ |τ_MTL − w_t τ_t|} for a ``(T, *shape)`` stack of w_t τ_t."""
    multi_task = weighted.sum(dim=0, keepdim=True)
    return weighted.abs() >= tall_lambda * (multi_task - weighted).abs()


def consensus_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: ConsensusConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Consensus merging of one parameter: keep the entries of τ_MTL that at least k TALL masks keep.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T (at least ``min_agreement`` of them).
        weights: w_t; None gives 1 for every model.
        config: :class:`ConsensusConfig`.
        key: the parameter's name (unused).

    Returns:
        θ_0 + α (m ⊙ τ_MTL), in the dtype of ``tensors[0]``.

    Raises:
        ConfigError: when fewer models than ``min_agreement`` are given (nothing could be kept).
    """
    del key
    config = config or ConsensusConfig()
    if len(tensors) < config.min_agreement:
        raise ConfigError(
            f"`min_agreement` is {config.min_agreement} but only {len(tensors)} model(s) are merged; "
            "no entry could be kept: lower `min_agreement` or merge more models"
        )
    base_c, deltas = stack_task_vectors(base, tensors, method="consensus")
    weighted = deltas.mul_(weight_column(resolve_weights(weights, len(tensors)), deltas))
    agreement = tall_masks(weighted, config.tall_lambda).sum(dim=0)
    multi_task = weighted.sum(dim=0)
    merged = base_c + config.scaling * multi_task * (agreement >= config.min_agreement)
    return merged.to(tensors[0].dtype)
