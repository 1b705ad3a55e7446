"""Euclidean projection onto the solid simplex ``{x ≥ 0, Σ x ≤ 1}``, one agent's block (MA-OSMA's step).

(The solid simplex is the probability simplex and everything below it; sewa's ``project_capped_simplex`` is
another set, ``{0 ≤ x ≤ 1, Σ x = k}``.)

The relaxed constraint set is ``P = {x ∈ [0, 1]^n : Σ_{v∈V_i} x_v ≤ 1 for every i}``, a product over blocks,
so projecting onto ``P`` is one independent projection per block. For a vector ``y``:
``Proj(y) = max(y - θ, 0)`` with ``θ = 0`` when ``Σ max(y, 0) ≤ 1``, and otherwise the ``θ > 0`` that makes
the sum exactly 1, found by sorting (``O(K log K)`` per block).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["project_solid_simplex"]


def project_solid_simplex(values: ArrayLike, valid: ArrayLike | None = None) -> NDArray[np.float64]:
    """Project every row of ``values`` onto the solid simplex ``{x ≥ 0, Σ x ≤ 1}``, all rows at once.

    Args:
        values: shape ``(B, K)``.
        valid: optional boolean ``(B, K)``; ``False`` entries are padding, excluded from the row and set to 0.

    Returns:
        The projections, shape ``(B, K)``.

    Examples:
        >>> project_solid_simplex([[0.2, 0.3], [1.0, 1.0], [-1.0, 0.5]]).tolist()
        [[0.2, 0.3], [0.5, 0.5], [0.0, 0.5]]
    """
    y = np.array(values, dtype=np.float64, ndmin=2)
    mask = np.ones(y.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    # Pads sit at (row minimum - 1): below every real entry and below θ, so they never enter the support.
    row_min = np.where(mask, y, np.inf).min(axis=1, keepdims=True)
    y = np.where(mask, y, row_min - 1.0)
    clipped = np.where(mask, np.maximum(y, 0.0), 0.0)
    inside = clipped.sum(axis=1) <= 1.0
    ordered = -np.sort(-y, axis=1)
    cumulative = np.cumsum(ordered, axis=1) - 1.0
    ranks = np.arange(1, y.shape[1] + 1)
    support = (ordered - cumulative / ranks > 0).sum(axis=1)
    support = np.maximum(support, 1)
    theta = cumulative[np.arange(y.shape[0]), support - 1] / support
    projected = np.where(mask, np.maximum(y - theta[:, None], 0.0), 0.0)
    return np.where(inside[:, None], clipped, projected)
