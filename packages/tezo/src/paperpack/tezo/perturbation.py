"""Exact in-place perturbation: θ ← θ ± ρZ and back to θ bit for bit, in any floating dtype.

Rounding makes ``fl(fl(θ + ρZ) − ρZ)`` differ from θ: on a bfloat16 weight, 100 perturb-and-restore round
trips of MeZO's order (+ρZ, −2ρZ, +ρZ) changed 94 % of the entries and moved the weights by 3.8 % of their
norm, more than the updates of a typical learning rate; float16 and float32 drifted too, by less
(``benchmarks/restore_drift.py``). No formula undoes the rounding, because ``fl(θ + ρZ)`` maps some distinct
θ to the same value (θ smaller than ρZ, θ + ρZ crossing a power of two, ties). So :func:`perturb_` computes,
block by block, both ``θ⁺ = fl(θ ± ρZ)`` and the value the plain inverse would restore from it, and keeps the
original θ of the entries where the two disagree: 4.6 % of a bfloat16 or float16 block of N(0, 0.02²)
entries at ρ = 1e-3, 7.5 % of a float32 one (its ρZ carries few bits below θ's last place, so exact ties are
common), about 14 % of the block's bytes with their int32 indices. :func:`restore_` applies the plain inverse
and writes those entries back. When keeping the entries would cost more than the block itself, the whole
block is kept instead, so the patches never take more memory than a copy of the parameters.

The sum is formed in ``delta``'s dtype (the working dtype, at least float32) and rounded once to the
parameter's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Patch", "perturb_", "restore_"]

Patch = tuple[Tensor | None, Tensor]
"""What :func:`restore_` needs besides the plain inverse: ``(indices, original values)`` of the entries it
would get wrong (int32 indices within the block), or ``(None, original block)`` when that is smaller."""

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _shifted(block: Tensor, delta: Tensor, sign: int) -> Tensor:
    """``fl(block + sign·delta)`` in the block's dtype, the sum formed in ``delta``'s dtype."""
    work = block.to(delta.dtype)
    total = work + delta if sign > 0 else work - delta
    return total.to(block.dtype)


def perturb_(block: Tensor, delta: Tensor, sign: int) -> Patch:
    """In place: ``block ← fl(block + sign·delta)``; returns the :data:`Patch` that undoes it exactly.

    Args:
        block: a contiguous 1-D slice of a parameter (modified in place).
        delta: ρ·Z_t for these entries, 1-D, in the working dtype (at least float32).
        sign: +1 or −1.

    Returns:
        The patch to pass to :func:`restore_` with the same ``delta`` and ``sign``.

    Examples:
        >>> import torch
        >>> theta = torch.randn(1000).to(torch.bfloat16)
        >>> block, delta = theta.clone(), torch.randn(1000) * 1e-3
        >>> patch = perturb_(block, delta, +1)
        >>> restore_(block, delta, +1, patch)
        >>> torch.equal(block, theta)
        True
    """
    shifted = _shifted(block, delta, sign)
    back = _shifted(shifted, delta, -sign)
    bits = _BITS[block.element_size()]
    wrong = (back.view(bits) != block.view(bits)).nonzero().squeeze(1)
    del back
    # An index costs 4 bytes and a value one item: keep the whole block once that is no larger.
    if wrong.numel() * (4 + block.element_size()) >= block.numel() * block.element_size():
        patch: Patch = (None, block.clone())
    else:
        patch = (wrong.to(torch.int32), block.index_select(0, wrong))
    block.copy_(shifted)
    return patch


def restore_(block: Tensor, delta: Tensor, sign: int, patch: Patch) -> None:
    """In place: undo :func:`perturb_` (``block ← fl(block − sign·delta)``, then the patch), bit for bit."""
    indices, values = patch
    if indices is None:
        block.copy_(values)
        return
    block.copy_(_shifted(block, delta, -sign))
    block.index_copy_(0, indices.long(), values)
