"""Isotropic merging, Iso-C and Iso-CTS: task-arithmetic matrices with a flattened singular spectrum.

Marczak et al., 2025, "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces",
arXiv:2502.04959.

Iso-C: for each 2-D parameter, the task-arithmetic sum Δ_TA = Σ_t w_t τ_t = U Σ Vᵀ is replaced by
σ̄ U Vᵀ, where σ̄ is the mean singular value (a flat, "isotropic" spectrum), and θ = θ_0 + α σ̄ U Vᵀ.

Iso-CTS: the top-k singular vectors of Δ_TA (k = ⌊f · r⌋, f = ``common_space_fraction``) span the common
subspace. Each task matrix is projected out of it, τ_t − U_c U_cᵀ τ_t, and contributes its top s = (r − k) / T
singular vectors (k is adjusted so that T divides r − k). The concatenated bases are orthogonalized (polar
factors, as in TSV-M), every singular value is replaced by the mean of all kept ones, and θ = θ_0 + α Δ.

Parameters that are not matrices, and keys matching ``exclude_keys``, are averaged: θ = θ_0 + α · mean_t τ_t
(as in the paper's code and FusionBench).

Ours: only singular directions of numerically nonzero singular values are kept (and averaged into σ̄), in
Δ_TA and in each projected task matrix (:func:`~paperpack.r_tsvm.methods._common.numerical_rank`). The paper
flattens the whole spectrum, which for a rank-deficient Δ_TA (merging LoRA adapters) gives σ̄ to directions
that are arbitrary: they depend on the SVD routine, the device and the dtype. With full-rank matrices nothing
changes. In Iso-CTS, parallel task matrices are merged into their mean before their task-specific
directions are taken (``parallel_tol``, as in TSV-M; the common subspace still comes from the sum of all of
them), and the groups count as the tasks. ``svd="fast"`` (the default) takes the top triplets and polar
factors from Gram eigendecompositions where those are accurate (:mod:`paperpack.r_tsvm.methods.spectral`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.r_tsvm.config import IsoCConfig, IsoCTSConfig
from paperpack.r_tsvm.methods._common import (
    is_excluded,
    numerical_rank,
    resolve_weights,
    stack_task_vectors,
    weight_column,
)
from paperpack.r_tsvm.methods.spectral import (
    POLAR_CONDITION,
    POLAR_SHAPE,
    gram,
    group_means,
    parallel_groups,
    polar_factor,
    top_triplets,
)

__all__ = ["iso_c_merge", "iso_cts_merge", "iso_cts_spaces", "isotropic"]


def _averaged(base: Tensor, deltas: Tensor, alpha: float, dtype: torch.dtype) -> Tensor:
    return (base + alpha * deltas.mean(dim=0)).to(dtype)


def iso_c_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: IsoCConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Iso-C of one parameter: flatten the spectrum of the task-arithmetic sum.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`IsoCConfig`.
        key: the parameter's name, matched against ``exclude_keys``.

    Returns:
        θ_0 + α σ̄ U Vᵀ, in the dtype of ``tensors[0]``.
    """
    config = config or IsoCConfig()
    base_c, deltas = stack_task_vectors(base, tensors, method="iso_c")
    deltas.mul_(weight_column(resolve_weights(weights, len(tensors)), deltas))
    if deltas.dim() != 3 or is_excluded(key, config.exclude_keys):
        return _averaged(base_c, deltas, config.alpha, tensors[0].dtype)
    merged = isotropic(deltas.sum(dim=0), config.svd)
    return (base_c + config.alpha * merged).to(tensors[0].dtype)


def isotropic(matrix: Tensor, svd: str = "fast") -> Tensor:
    """σ̄ U_r V_rᵀ: the matrix with its numerically nonzero singular values replaced by their mean.

    The fast path takes σ̄ and U Vᵀ (the polar factor) from the Gram matrix's eigendecomposition when the
    matrix is clearly rectangular and its Gram matrix well-conditioned (the rules of
    :func:`~paperpack.r_tsvm.methods.spectral.polar_factor`); otherwise, and with ``svd="exact"``, the SVD. A
    nearly square matrix goes straight to the SVD (its polar factor would take the SVD anyway).
    """
    short, long = sorted(matrix.shape)
    if svd == "fast" and 0 < short <= POLAR_SHAPE * long:
        wide = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.mT
        values = torch.linalg.eigvalsh(gram(wide))
        threshold = POLAR_CONDITION.get(matrix.dtype, POLAR_CONDITION[torch.float32])
        if float(values[0]) >= threshold * float(values[-1]) > 0:
            flat: Tensor = values.sqrt().mean() * polar_factor(matrix, "fast")
            return flat
    left, singular, right = torch.linalg.svd(matrix, full_matrices=False)
    (rank,) = numerical_rank(singular, matrix.shape)
    if not rank:  # numerically zero: nothing to add
        return torch.zeros_like(matrix)
    merged: Tensor = singular[:rank].mean() * torch.matmul(left[:, :rank], right[:rank])
    return merged


def iso_cts_spaces(rank: int, num_tasks: int, fraction: float) -> tuple[int, int]:
    """Sizes of Iso-CTS's subspaces: (k common directions, s directions per task), with k + T·s = r."""
    common = int(rank * fraction)
    per_task = round((rank - common) / num_tasks)
    common = max(0, rank - per_task * num_tasks)
    return common, (rank - common) // num_tasks


def iso_cts_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: IsoCTSConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """Iso-CTS of one parameter: a common subspace plus task-specific directions, with a flat spectrum.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t; None gives 1 for every model.
        config: :class:`IsoCTSConfig`.
        key: the parameter's name, matched against ``exclude_keys``.

    Returns:
        θ_0 + α σ̄ U⊥ V⊥ᵀ, in the dtype of ``tensors[0]``.
    """
    config = config or IsoCTSConfig()
    base_c, deltas = stack_task_vectors(base, tensors, method="iso_cts")
    deltas.mul_(weight_column(resolve_weights(weights, len(tensors)), deltas))
    if deltas.dim() != 3 or is_excluded(key, config.exclude_keys):
        return _averaged(base_c, deltas, config.alpha, tensors[0].dtype)
    total = deltas.sum(dim=0)
    groups = parallel_groups(deltas, config.parallel_tol)
    tasks = group_means(deltas, groups)
    num_tasks, rows, cols = tasks.shape
    common, per_task = iso_cts_spaces(min(rows, cols), num_tasks, config.common_space_fraction)
    ((u_common, s_common, vh_common),) = top_triplets(total[None], [max(common, 1)], config.svd)
    common = min(common, s_common.numel())
    u_common, s_common, vh_common = u_common[:, :common], s_common[:common], vh_common[:common]
    u_parts, s_parts, vh_parts = [u_common], [s_common], [vh_common]
    if per_task > 0:
        specific = tasks - u_common @ (u_common.mT @ tasks)
        scale = torch.linalg.matrix_norm(tasks)  # the projection's rounding scales with τ_t, not the rest
        for left, singular, right in top_triplets(specific, [per_task] * num_tasks, config.svd, scale=scale):
            u_parts.append(left)
            s_parts.append(singular)
            vh_parts.append(right)
    if not sum(part.numel() for part in s_parts):  # every task matrix is numerically zero
        return base_c.to(tensors[0].dtype)
    u = polar_factor(torch.cat(u_parts, dim=1), config.svd)
    vh = polar_factor(torch.cat(vh_parts, dim=0), config.svd)
    merged = torch.cat(s_parts).mean() * (u @ vh)
    return (base_c + config.alpha * merged).to(tensors[0].dtype)
