"""R-TSVM / RESM: TSV-M with outlier-aware weighting and a sparsity-adaptive rank.

Yang et al., 2025, "Mix Data or Merge Models? Balancing the Helpfulness, Honesty, and Harmlessness of LLMs via
Model Merging", arXiv:2502.06876. The method is called R-TSVM in v2 and RESM ("Reweighting Enhanced task
Singular Merging") in v3.

The paper builds on TSV-M (see :mod:`paperpack.r_tsvm.methods.tsv`) and adds two components whose exact
formulas are not public (no official code). This module implements them as configurable rules; every default
is ours, and with ``outlier_mode="none"`` and ``rank_mode="fixed"`` the method is exactly TSV-M.

For each 2-D parameter with task matrices Δ_t = w_t (θ_t − θ_0):

1. Outlier-aware weighting ("preference noise"). Robust z-scores of the nonzero entries of each Δ_t,
   z = (x − median) / (1.4826 · MAD) (``outlier_mode="mad"``) or (x − mean) / std (``"sigma"``); entries with
   |z| > κ are outliers and o_t is their fraction.

   - ``outlier_action="downweight"``: a per-task, per-layer weight ω_t = 1 / (1 + γ · o_t / ō) (ō the mean
     over tasks), renormalised so that Σ_t ω_t = T; task t's singular values are multiplied by ω_t.
   - ``"clip"``: outlier entries are winsorised to median ± κ · scale before the decomposition.
   - ``"both"``: clip, then downweight.

2. Parallel task matrices (after the weights ω_t) are merged into their mean, as in TSV-M
   (``parallel_tol``); the groups are the tasks of the next steps.

3. Sparsity-adaptive rank. TSV-M keeps k = ⌊r / T⌋ singular triplets per task in every layer. Here the rank of
   layer p is chosen from the task matrices, never above that budget:

   - ``rank_mode="sparsity"``: s_p = mean_t fraction(|Δ_t| ≤ ε_rel · m_t), with m_t the median of the nonzero
     |Δ_t| (a scale that one outlier cannot move; exact zeros always count), and
     k_p = clip(round(k_cap (1 − s_p)), k_min, k_cap).
   - ``"energy"``: per task, the smallest k_t whose singular values hold a fraction τ of ‖Δ_t‖²_F, clipped to
     [k_min, k_cap]; τ = 1 keeps every nonzero singular value.
   - ``"fixed"``: k = k_cap (TSV-M).

4. TSV-M with those ranks and singular-value weights, θ = θ_0 + α Δ. Parameters that are not matrices, and
   keys matching ``exclude_keys`` (none by default), are averaged as in TSV-M.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from paperpack.r_tsvm.config import RTSVMConfig
from paperpack.r_tsvm.methods._common import (
    is_excluded,
    resolve_weights,
    stack_task_vectors,
    weight_column,
)
from paperpack.r_tsvm.methods.spectral import (
    gram_eigh,
    group_means,
    parallel_groups,
    singular_values,
)
from paperpack.r_tsvm.methods.tsv import tsv_budget, tsv_combine

__all__ = [
    "adaptive_ranks",
    "outlier_statistics",
    "r_tsvm_layer",
    "r_tsvm_merge",
    "r_tsvm_merge_with_report",
    "zero_fraction",
]


# 1.4826 · MAD estimates the standard deviation of a normal distribution.
_MAD_TO_STD = 1.4826


def _center_and_scale(values: Tensor, mode: str) -> tuple[float, float]:
    if mode == "mad":
        center = values.median()
        return float(center), _MAD_TO_STD * float((values - center).abs().median())
    return float(values.mean()), float(values.std()) if values.numel() > 1 else 0.0


def outlier_statistics(delta: Tensor, mode: str, kappa: float) -> tuple[float, float, float]:
    """Robust statistics of one task matrix's nonzero entries: (outlier fraction o_t, center, scale).

    Zeros are left out: they are parameters a fine-tune did not touch, not evidence about the spread. When
    fewer than two entries are nonzero, or the scale is zero, no entry is called an outlier (o_t = 0).
    """
    values = delta[delta != 0]
    if values.numel() < 2:
        return 0.0, 0.0, 0.0
    center, scale = _center_and_scale(values, mode)
    if not scale > 0.0:
        return 0.0, center, 0.0
    fraction = float(((values - center).abs() > kappa * scale).float().mean())
    return fraction, center, scale


def zero_fraction(delta: Tensor, eps_rel: float) -> float:
    """The fraction of a task matrix's entries that count as zero: |Δ| ≤ ε_rel · (median of the nonzero |Δ|).

    The scale is the median magnitude of the nonzero entries, so one outlier moves it by at most one rank
    among them (``max|Δ|``, the scale before, moved with every outlier). Exact zeros always count; an all-zero
    matrix is all zeros.
    """
    magnitudes = delta.abs().reshape(-1)
    nonzero = magnitudes[magnitudes != 0]
    if not nonzero.numel():
        return 1.0
    return float((magnitudes <= eps_rel * nonzero.median()).float().mean())


def adaptive_ranks(
    deltas: Tensor, singular: Tensor, k_cap: int, config: RTSVMConfig
) -> tuple[list[int], float]:
    """Per-task ranks k_t of one layer and its sparsity s_p (see the module docstring).

    Args:
        deltas: ``(T, rows, cols)`` task matrices.
        singular: their singular values ``(T, r)``, descending (used by ``rank_mode="energy"`` only).
        k_cap: TSV-M's budget ⌊r / T⌋.
        config: the rank rule.
    """
    num_tasks = deltas.shape[0]
    k_min = min(config.k_min, k_cap)
    sparsity = sum(zero_fraction(delta, config.eps_rel) for delta in deltas) / num_tasks
    if config.rank_mode == "fixed":
        return [k_cap] * num_tasks, sparsity
    if config.rank_mode == "sparsity":
        k = min(max(round(k_cap * (1.0 - sparsity)), k_min), k_cap)
        return [k] * num_tasks, sparsity
    cumulative = singular.double().square().cumsum(dim=1)
    # The total is the running sum's own last entry, so that τ = 1 is reached exactly (a separately summed
    # total could exceed it in the last bit, and no k would qualify).
    total = cumulative[:, -1:]
    reached = cumulative >= config.energy_tau * total
    ranks = []
    for t in range(num_tasks):
        k = int(reached[t].int().argmax()) + 1 if float(total[t]) > 0 else k_min
        ranks.append(min(max(k, k_min), k_cap))
    return ranks, sparsity


def r_tsvm_layer(deltas: Tensor, config: RTSVMConfig) -> tuple[Tensor, dict[str, Any]]:
    """R-TSVM of one 2-D parameter's task matrices.

    Args:
        deltas: ``(T, rows, cols)`` task matrices Δ_t (already multiplied by the model weights); clipped and
            scaled by ω_t in place.
        config: :class:`RTSVMConfig`.

    Returns:
        The merged task matrix Δ (before α), and a report: the ranks k_t (of each task's group), the budget
        k_cap, the sparsity s_p, the outlier fractions o_t, the weights ω_t and the groups of parallel tasks.
    """
    num_tasks = deltas.shape[0]
    fractions = [0.0] * num_tasks
    omega = [1.0] * num_tasks
    if config.outlier_mode != "none":
        for t in range(num_tasks):
            fractions[t], center, scale = outlier_statistics(deltas[t], config.outlier_mode, config.kappa)
            if config.outlier_action in ("clip", "both") and scale > 0.0:
                nonzero = deltas[t] != 0
                clipped = deltas[t].clamp(center - config.kappa * scale, center + config.kappa * scale)
                deltas[t] = torch.where(nonzero, clipped, deltas[t])
        mean_fraction = sum(fractions) / num_tasks
        if config.outlier_action in ("downweight", "both") and mean_fraction > 0.0:
            raw = [1.0 / (1.0 + config.gamma * fraction / mean_fraction) for fraction in fractions]
            omega = [value * num_tasks / sum(raw) for value in raw]
    # ω_t multiplies task t's singular values: the same as scaling its task matrix.
    deltas.mul_(weight_column(omega, deltas))
    groups = parallel_groups(deltas, config.parallel_tol)
    tasks = group_means(deltas, groups)
    k_cap = tsv_budget(tasks.shape[1:], tasks.shape[0])
    # The fast path's energy ranks and triplets come from one eigendecomposition of each Gram matrix.
    energy = config.rank_mode == "energy"
    decomposition = gram_eigh(tasks) if energy and config.svd == "fast" else None
    singular = (
        singular_values(tasks, config.svd, decomposition=decomposition)
        if energy
        else tasks.new_zeros(len(groups), 1)
    )
    group_ranks, sparsity = adaptive_ranks(tasks, singular, k_cap, config)
    merged = tsv_combine(tasks, group_ranks, svd=config.svd, decomposition=decomposition)
    ranks = [0] * num_tasks
    for group, rank in zip(groups, group_ranks, strict=True):
        for t in group:
            ranks[t] = rank
    report = {
        "ranks": ranks,
        "k_cap": k_cap,
        "sparsity": sparsity,
        "outlier_fractions": fractions,
        "weights": omega,
        "groups": groups,
    }
    return merged, report


def r_tsvm_merge_with_report(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: RTSVMConfig | None = None,
    key: str | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """R-TSVM of one parameter, with the per-layer report (empty for averaged parameters).

    Args and returns as :func:`r_tsvm_merge`, plus the report of :func:`r_tsvm_layer`.
    """
    config = config or RTSVMConfig()
    base_c, deltas = stack_task_vectors(base, tensors, method="r_tsvm")
    deltas.mul_(weight_column(resolve_weights(weights, len(tensors)), deltas))
    if deltas.dim() != 3 or is_excluded(key, config.exclude_keys):
        return (base_c + config.alpha * deltas.mean(dim=0)).to(tensors[0].dtype), {}
    merged, report = r_tsvm_layer(deltas, config)
    return (base_c + config.alpha * merged).to(tensors[0].dtype), report


def r_tsvm_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: RTSVMConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """R-TSVM (RESM) of one parameter: TSV-M with outlier-aware weights and a sparsity-adaptive rank.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: w_t on each task matrix before everything else; None gives 1.
        config: :class:`RTSVMConfig`.
        key: the parameter's name, matched against ``exclude_keys``.

    Returns:
        θ_0 + α Δ, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> base = torch.zeros(6, 6)
        >>> models = [base + torch.randn(6, 6, generator=g) for _ in range(3)]
        >>> from paperpack.r_tsvm.methods.tsv import tsv_m_merge
        >>> off = RTSVMConfig(outlier_mode="none", rank_mode="fixed")
        >>> torch.allclose(r_tsvm_merge(base, models, config=off), tsv_m_merge(base, models), atol=1e-5)
        True
    """
    return r_tsvm_merge_with_report(base, tensors, weights=weights, config=config, key=key)[0]
