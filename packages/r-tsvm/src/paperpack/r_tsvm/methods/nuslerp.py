"""NuSLERP: spherical interpolation of two models, or of their task vectors, by a ratio of weights.

mergekit's ``nuslerp`` method (no paper). With weights w_1, w_2 the factor is t = w_2 / (w_1 + w_2)
(t = 0.5 when the weights cancel). Without a base the two models are interpolated; with one, their task
vectors τ_t = θ_t − θ_0 are, and θ = θ_0 + slerp(τ_1, τ_2; t). ``flatten`` (the default) interpolates each
tensor as one vector; otherwise each vector along the last dimension (each row of a weight matrix), or along
the first dimension with ``row_wise``. Vectors that are colinear to rounding (1 − cos² Ω ≤ 1e-16) are
interpolated linearly; a zero vector has cosine 0 with the other (as mergekit's normalisation gives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import NuSlerpConfig
from paperpack.r_tsvm.methods._common import check_tensors, compute_dtype, resolve_weights

__all__ = ["nuslerp", "nuslerp_merge"]

_COLINEAR = 1e-16


def nuslerp(v0: Tensor, v1: Tensor, t: float, *, flatten: bool = True, row_wise: bool = False) -> Tensor:
    """Spherical interpolation of the vectors of ``v0`` and ``v1`` (the module docstring says which vectors).

    Args:
        v0: the tensor at t = 0.
        v1: the tensor at t = 1.
        t: the interpolation factor.
        flatten: one vector per tensor.
        row_wise: without ``flatten``, vectors along the first dimension instead of the last.
    """
    shape = v0.shape
    if flatten or v0.dim() < 2:
        a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    norm_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    scale = norm_a * norm_b
    cosine = torch.where(
        scale > 0, (a * b).sum(dim=-1, keepdim=True) / torch.where(scale > 0, scale, 1.0), 0.0
    )
    cosine = cosine.clamp(-1.0, 1.0)
    colinear = 1 - cosine.square() <= _COLINEAR
    angle = torch.acos(torch.where(colinear, 0.0, cosine))
    sine = torch.where(colinear, 1.0, torch.sin(angle))
    spherical = (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / sine
    result = torch.where(colinear, (1 - t) * a + t * b, spherical)
    if not (flatten or v0.dim() < 2) and row_wise:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: NuSlerpConfig | None = None,
    key: str | None = None,
) -> Tensor:
    """NuSLERP of one parameter of two models (of their task vectors when ``base`` is given).

    Args:
        base: θ_0, or None to interpolate the models themselves.
        tensors: exactly two tensors.
        weights: w_1, w_2; t = w_2 / (w_1 + w_2) (None: t = 0.5).
        config: :class:`NuSlerpConfig`.
        key: the parameter's name (unused).

    Returns:
        The interpolated tensor, in the dtype of ``tensors[0]``.

    Examples:
        >>> import torch
        >>> models = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
        >>> nuslerp_merge(None, models, weights=[1.0, 1.0]).tolist()
        [0.7071067690849304, 0.7071067690849304]
    """
    del key
    config = config or NuSlerpConfig()
    if len(tensors) != 2:
        raise ConfigError(f"nuslerp merges exactly 2 models, got {len(tensors)}")
    check_tensors(tensors, base, method="nuslerp")
    w = resolve_weights(weights, 2)
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    dtype = compute_dtype(tensors[0].dtype)
    v0, v1 = (tensor.to(dtype) for tensor in tensors)
    if base is None:
        merged = nuslerp(v0, v1, t, flatten=config.flatten, row_wise=config.row_wise)
    else:
        base_c = base.to(device=v0.device, dtype=dtype)
        merged = base_c + nuslerp(
            v0 - base_c, v1 - base_c, t, flatten=config.flatten, row_wise=config.row_wise
        )
    return merged.to(tensors[0].dtype)
