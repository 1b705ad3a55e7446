"""Task Singular Vectors merging (TSV-M): low-rank task matrices with decorrelated singular vectors.

Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging",
arXiv:2412.00081.

For each 2-D parameter, every task matrix Δ_t = w_t (θ_t − θ_0) is reduced to its top k = ⌊r / T⌋ singular
triplets (r = min(rows, cols)): Δ_t ≈ U_t[:, :k] diag(σ_t[:k]) V_tᵀ[:k]. The truncated factors are
concatenated, U = [U_1 … U_T], Σ = diag(σ_1 … σ_T), Vᵀ = [V_1ᵀ; …; V_Tᵀ], and decorrelated by replacing U
and Vᵀ with their nearest orthogonal matrices (the polar factors: U = PSQᵀ → U⊥ = PQᵀ), which removes
the interference between tasks' singular vectors. Then Δ = U⊥ Σ V⊥ᵀ and θ = θ_0 + α Δ. Parameters that
are not matrices, and keys matching ``exclude_keys``, are averaged: θ = θ_0 + α · mean_t Δ_t (as in the
paper's code and FusionBench).

Ours:

- When T > r (more tasks than the rank, e.g. a 2-row matrix and 3 tasks), k = 1 instead of ⌊r / T⌋ = 0, which
  would leave the parameter unchanged.
- A task keeps at most its numerical rank of triplets
  (:func:`~paperpack.r_tsvm.methods._common.numerical_rank`). The singular vectors of a zero singular value
  are arbitrary, and the polar factor mixes them into every other column, so without this a rank-deficient
  task matrix (a LoRA adapter's B·A of rank 8 when k = 32, say) gave a different merge on a GPU than on the
  CPU, or in float32 than in float64. With full-rank task matrices nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.r_tsvm.config import TSVMConfig
from paperpack.r_tsvm.methods._common import (
    is_excluded,
    numerical_rank,
    resolve_weights,
    stack_task_vectors,
    weight_column,
)

__all__ = ["orthogonalize", "tsv_budget", "tsv_combine", "tsv_m_merge"]


def tsv_budget(shape: Sequence[int], num_tasks: int) -> int:
    """TSV-M's per-task rank k = ⌊min(rows, cols) / T⌋, at least 1."""
    return max(1, min(shape[0], shape[1]) // num_tasks)


def orthogonalize(matrix: Tensor) -> Tensor:
    """The nearest matrix with orthonormal columns (or rows, if wide): the polar factor P Qᵀ of P S Qᵀ."""
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    return torch.matmul(left, right)


def tsv_combine(
    deltas: Tensor, ranks: Sequence[int], singular_scales: Sequence[float] | None = None
) -> Tensor:
    """Concatenate the top ``ranks[t]`` singular triplets of each task matrix, decorrelate, and recombine.

    A task contributes at most its numerical rank of triplets (see the module docstring).

    Args:
        deltas: ``(T, rows, cols)`` task matrices Δ_t.
        ranks: k_t per task (TSV-M uses the same k for all).
        singular_scales: a factor per task on its singular values (R-TSVM's outlier weights); None for 1.

    Returns:
        U⊥ Σ V⊥ᵀ, shape ``(rows, cols)``.
    """
    left, singular, right = torch.linalg.svd(deltas, full_matrices=False)
    scales = singular_scales if singular_scales is not None else [1.0] * deltas.shape[0]
    nonzero = numerical_rank(singular, deltas.shape)
    kept = [(t, min(k, nonzero[t])) for t, k in enumerate(ranks) if min(k, nonzero[t]) > 0]
    if not kept:
        return torch.zeros_like(deltas[0])
    u = torch.cat([left[t, :, :k] for t, k in kept], dim=1)
    s = torch.cat([singular[t, :k] * scales[t] for t, k in kept])
    vh = torch.cat([right[t, :k, :] for t, k in kept], dim=0)
    return (orthogonalize(u) * s) @ orthogonalize(vh)


def tsv_m_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: TSVMConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """TSV-M of one parameter.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t on each task matrix before the decomposition; None gives 1.
        config: :class:`TSVMConfig`.
        key: the parameter's name, matched against ``exclude_keys``.

    Returns:
        θ_0 + α Δ, in the dtype of ``tensors[0]``.

    Example:
        >>> import torch
        >>> base, delta = torch.zeros(4, 3), torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(tsv_m_merge(base, [base + delta]), delta, atol=1e-5)
        True
    """
    config = config or TSVMConfig()
    base_c, deltas = stack_task_vectors(base, tensors, method="tsv_m")
    deltas.mul_(weight_column(resolve_weights(weights, len(tensors)), deltas))
    if deltas.dim() != 3 or is_excluded(key, config.exclude_keys):
        merged = deltas.mean(dim=0)
    else:
        k = tsv_budget(deltas.shape[1:], deltas.shape[0])
        merged = tsv_combine(deltas, [k] * deltas.shape[0])
    return (base_c + config.alpha * merged).to(tensors[0].dtype)
