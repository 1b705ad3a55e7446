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
- Parallel task matrices (identical experts, one expert at two scales) make the concatenated bases
  rank-deficient, and their polar factor has no unique answer: task matrices within ``parallel_tol`` of each
  other's direction are merged into their mean first, and TSV-M runs on the T' groups, k = ⌊r / T'⌋
  (:func:`~paperpack.r_tsvm.methods.spectral.parallel_groups`). Three copies of one expert merge to that
  expert.
- ``svd="fast"`` (the default) computes the triplets and polar factors from Gram-matrix eigendecompositions
  where those are accurate (:mod:`paperpack.r_tsvm.methods.spectral`); ``svd="exact"`` uses full SVDs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.r_tsvm.config import TSVMConfig
from paperpack.r_tsvm.methods._common import (
    is_excluded,
    resolve_weights,
    stack_task_vectors,
    weight_column,
)
from paperpack.r_tsvm.methods.spectral import (
    GramEigh,
    group_means,
    parallel_groups,
    polar_factor,
    top_triplets,
)

__all__ = ["orthogonalize", "tsv_budget", "tsv_combine", "tsv_m_merge"]


def tsv_budget(shape: Sequence[int], num_tasks: int) -> int:
    """TSV-M's per-task rank k = ⌊min(rows, cols) / T⌋, at least 1."""
    return max(1, min(shape[0], shape[1]) // num_tasks)


def orthogonalize(matrix: Tensor, svd: str = "exact") -> Tensor:
    """The nearest matrix with orthonormal columns (or rows, if wide): the polar factor P Qᵀ of P S Qᵀ.

    See :func:`~paperpack.r_tsvm.methods.spectral.polar_factor` for ``svd="fast"``.
    """
    return polar_factor(matrix, svd)


def tsv_combine(
    deltas: Tensor,
    ranks: Sequence[int],
    singular_scales: Sequence[float] | None = None,
    *,
    svd: str = "fast",
    decomposition: GramEigh | None = None,
) -> Tensor:
    """Concatenate the top ``ranks[t]`` singular triplets of each task matrix, decorrelate, and recombine.

    A task contributes at most its numerical rank of triplets (see the module docstring).

    Args:
        deltas: ``(T, rows, cols)`` task matrices Δ_t.
        ranks: k_t per task (TSV-M uses the same k for all).
        singular_scales: a factor per task on its singular values (R-TSVM's outlier weights); None for 1.
        svd: ``"fast"`` or ``"exact"`` (:mod:`~paperpack.r_tsvm.methods.spectral`).
        decomposition: the fast path's :func:`~paperpack.r_tsvm.methods.spectral.gram_eigh` of ``deltas`` if
            the caller has it already (R-TSVM's energy ranks need it too).

    Returns:
        U⊥ Σ V⊥ᵀ, shape ``(rows, cols)``.
    """
    scales = singular_scales if singular_scales is not None else [1.0] * deltas.shape[0]
    triplets = top_triplets(deltas, ranks, svd, decomposition=decomposition)
    kept = [(u, s * scale, vh) for (u, s, vh), scale in zip(triplets, scales, strict=True)]
    kept = [part for part in kept if part[1].numel()]
    if not kept:
        return torch.zeros_like(deltas[0])
    u = torch.cat([part[0] for part in kept], dim=1)
    s = torch.cat([part[1] for part in kept])
    vh = torch.cat([part[2] for part in kept], dim=0)
    return (polar_factor(u, svd) * s) @ polar_factor(vh, svd)


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

    Examples:
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
        tasks = group_means(deltas, parallel_groups(deltas, config.parallel_tol))
        k = tsv_budget(tasks.shape[1:], tasks.shape[0])
        merged = tsv_combine(tasks, [k] * tasks.shape[0], svd=config.svd)
    return (base_c + config.alpha * merged).to(tensors[0].dtype)
