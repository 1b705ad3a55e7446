"""SCE: select, calculate, erase (the merging step of FuseChat).

Wan et al., 2024, "FuseChat: Knowledge Fusion of Chat Models", arXiv:2408.07990.

For one parameter and task vectors τ_t = θ_t − θ_0:

1. Select: keep the ``select_topk`` fraction of the entries with nonzero variance across the task vectors, by
   that variance (ties at the cut kept); zero the others in every τ_t.
2. Calculate: a weight per task, η_t = mean(τ_t²) / Σ_s mean(τ_s²) (uniform when every τ_t is zero).
3. Erase: TIES's sign election by mass; entries of a task that disagree with the elected sign (or are zero)
   drop out.
4. θ = θ_0 + Σ_t η_t m_t τ_t / Σ_t η_t m_t (0 where no task takes part).

The weights come from the task vectors; per-model weights are refused. mergekit falls back to uniform
weights when Σ_s mean(τ_s²) < 1e-6 (an absolute threshold that most LLM task vectors fall under) and
divides by at least 1e-6; here the weights are uniform only when every task vector is zero, and nothing is
clamped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import SCEConfig
from paperpack.r_tsvm.methods._common import majority_sign, stack_task_vectors

__all__ = ["sce_merge", "sce_select"]


def sce_select(deltas: Tensor, fraction: float) -> Tensor:
    """SCE's selection mask: the ``fraction`` of entries with the largest variance across the task vectors.

    Only entries whose variance is nonzero count towards the number kept (⌊fraction · nonzero⌋); ties at the
    cut are kept.
    """
    if fraction >= 1.0:
        return torch.ones(deltas.shape[1:], dtype=torch.bool, device=deltas.device)
    variance = deltas.var(dim=0, unbiased=False)
    keep = int(fraction * int(torch.count_nonzero(variance)))
    if keep == 0:
        return torch.zeros_like(variance, dtype=torch.bool)
    flat = variance.reshape(-1)
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    return variance >= threshold


def sce_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: SCEConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """SCE of one parameter: select by variance, weigh by squared magnitude, erase minority signs, merge.

    Args:
        base: θ_0.
        tensors: θ_1..θ_T.
        weights: must be None (SCE computes each task's weight from its task vector).
        config: :class:`SCEConfig`.
        key: the parameter's name (unused).

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> sce_merge(torch.zeros(2), [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0])]).tolist()
        [2.6666667461395264, 1.0]
    """
    del key
    config = config or SCEConfig()
    if weights is not None:
        raise ConfigError(
            f"sce takes no `weights` (it weighs each task by its squared magnitude), got {weights!r}"
        )
    base_c, deltas = stack_task_vectors(base, tensors, method="sce")
    deltas.mul_(sce_select(deltas, config.select_topk))
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    eta = energy / total if total > 0 else torch.full_like(energy, 1.0 / deltas.shape[0])
    agree = deltas.sign() == majority_sign(deltas, "sum")
    mass = (eta.reshape(-1, *([1] * (deltas.dim() - 1))) * agree).to(deltas.dtype)
    divisor = mass.sum(dim=0)
    merged = (deltas * mass).sum(dim=0) / torch.where(divisor > 0, divisor, 1.0)
    return (base_c + merged).to(tensors[0].dtype)
