"""Spherical linear interpolation of two models (Shoemake, 1985; popularised for model merging by mergekit).

For one parameter, flatten both tensors v_0, v_1, measure the angle between them,
Ω = arccos(⟨v_0, v_1⟩ / (‖v_0‖ ‖v_1‖)), and interpolate along the great circle:

    slerp(v_0, v_1; t) = sin((1 − t) Ω) / sin Ω · v_0 + sin(t Ω) / sin Ω · v_1.

When the vectors are nearly colinear (|cos Ω| > ``dot_threshold``) the formula is ill-conditioned and linear
interpolation (1 − t) v_0 + t v_1 is used instead. The angle is taken over the whole tensor, as mergekit's
``slerp`` does. Ours: a tensor with a norm below ``eps`` is interpolated linearly (mergekit leaves it
unnormalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import SlerpConfig
from paperpack.r_tsvm.methods._common import stack_tensors

__all__ = ["slerp", "slerp_merge"]


def slerp(v0: Tensor, v1: Tensor, t: float, *, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation between two tensors of the same shape, computed in float32.

    Args:
        v0: the tensor at t = 0.
        v1: the tensor at t = 1.
        t: the interpolation factor.
        dot_threshold: above this |cos Ω| interpolate linearly.
        eps: norms below this count as zero (then interpolate linearly).

    Returns:
        The interpolated tensor, in float32 (float64 for float64 inputs).
    """
    a, b = v0.reshape(-1), v1.reshape(-1)
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if norm_a < eps or norm_b < eps:
        return ((1 - t) * v0 + t * v1).reshape(v0.shape)
    dot = float(torch.dot(a / norm_a, b / norm_b).clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        return ((1 - t) * v0 + t * v1).reshape(v0.shape)
    omega = math.acos(dot)
    sin_omega = math.sin(omega)
    return (math.sin((1 - t) * omega) / sin_omega) * v0 + (math.sin(t * omega) / sin_omega) * v1


def slerp_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: SlerpConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """SLERP between exactly two models' tensors (``base`` is not used).

    Args:
        base: ignored; accepted so every method has one signature.
        tensors: exactly two tensors: v_0 (t = 0) and v_1 (t = 1).
        weights: must be None (SLERP's factor is ``config.t``).
        config: :class:`SlerpConfig`.
        key: the parameter's name (unused).

    Returns:
        The interpolated tensor, in the dtype of ``tensors[0]``.

    Raises:
        ConfigError: for a number of tensors other than two, or for ``weights``.

    Examples:
        >>> import torch
        >>> slerp_merge(None, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]).tolist()
        [0.7071067690849304, 0.7071067690849304]
    """
    del base, key
    config = config or SlerpConfig()
    if weights is not None:
        raise ConfigError(
            f"slerp takes its interpolation factor from `t`, not `weights`; got weights={weights!r}"
        )
    if len(tensors) != 2:
        raise ConfigError(f"slerp merges exactly 2 models, got {len(tensors)}")
    stacked = stack_tensors(tensors, method="slerp")
    merged = slerp(stacked[0], stacked[1], config.t, dot_threshold=config.dot_threshold)
    return merged.to(tensors[0].dtype)
