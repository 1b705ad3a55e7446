"""Euclidean projection of the keep-probabilities onto the capped simplex {0 <= s <= 1, Σ s = k}.

SeWA constrains its relaxed mask to keep k snapshots in expectation; after each gradient step the
probabilities s are projected back. The projection solves min_x ||x - s||² subject to the box and the sum,
whose KKT conditions give x_i = clip(s_i - v, 0, 1) for the scalar v with Σ_i clip(s_i - v, 0, 1) = k
(the form the paper note reconstructs from ProbMask, Zhou et al. 2021).

The sum is piecewise linear and non-increasing in v with breakpoints at s_i and s_i - 1, so instead of a
bisection we evaluate it at every breakpoint and interpolate on the one segment that contains k: exact up to
rounding, O(K²) work for a window of K snapshots (K is tens), and no iteration count to choose.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_choice

__all__ = ["project_capped_simplex"]


def project_capped_simplex(s: Tensor, k: float, *, mode: str = "sum_eq_k") -> Tensor:
    """Project ``s`` onto {0 <= x <= 1, Σ x = k} (``mode="sum_eq_k"``) or {0 <= x <= 1, Σ x <= k}.

    Args:
        s: One-dimensional floating tensor of K probabilities (any values; they need not be feasible).
        k: Target sum, in [0, K].
        mode: ``"sum_eq_k"`` or ``"sum_le_k"``.

    Returns:
        A new tensor x of the same dtype and device, x_i = clip(s_i - v, 0, 1); ``s`` is not modified. The
        projection is computed in float64.

    Raises:
        ConfigError: ``s`` is not a finite one-dimensional floating tensor, or ``k`` is outside [0, K].

    Examples:
        >>> import torch
        >>> from paperpack.sewa import project_capped_simplex
        >>> project_capped_simplex(torch.tensor([0.9, 0.8, 0.1, 0.0]), 2.0)
        tensor([0.9500, 0.8500, 0.1500, 0.0500])
    """
    check_choice("mode", mode, ("sum_eq_k", "sum_le_k"))
    if not isinstance(s, Tensor) or s.dim() != 1 or not s.is_floating_point():
        raise ConfigError(f"`s` must be a one-dimensional floating tensor, got {_describe(s)}")
    values = s.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(values).all():
        raise ConfigError(f"`s` must be finite, got {s.tolist()}")
    size = values.size
    if not 0 <= k <= size:
        raise ConfigError(f"`k` must be in [0, {size}] (the length of `s`), got {k!r}")
    return torch.from_numpy(project(values, k, mode)).to(device=s.device, dtype=s.dtype)


def project(s: NDArray[np.float64], k: float, mode: str) -> NDArray[np.float64]:
    """``project_capped_simplex`` on a float64 array, unchecked: what SeWA's search calls every iteration."""
    if mode == "sum_le_k":
        clipped = np.clip(s, 0.0, 1.0)
        if float(clipped.sum()) <= k:
            return clipped
    breakpoints = np.sort(np.concatenate([s - 1.0, s]))
    # total[j] = Σ_i clip(s_i - b_j, 0, 1): non-increasing in j, from K at min(s) - 1 down to 0 at max(s).
    total = np.clip(s[None, :] - breakpoints[:, None], 0.0, 1.0).sum(axis=1)
    j = int((total >= k).sum()) - 1
    if j == breakpoints.size - 1 or total[j] == k:
        v = breakpoints[j]
    else:
        # total is linear between breakpoints j and j+1 and crosses k strictly inside: total[j] > total[j+1].
        slope = (total[j] - total[j + 1]) / (breakpoints[j + 1] - breakpoints[j])
        v = breakpoints[j] + (total[j] - k) / slope
    result: NDArray[np.float64] = np.clip(s - v, 0.0, 1.0)
    return result


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
