"""Building blocks shared by the merge methods: input checks, task vectors, masks, seeds.

Every method computes in float32 (float64 stays float64) and returns the dtype of its inputs, so a bf16
checkpoint merges without half-precision rounding inside the arithmetic.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError

__all__ = [
    "check_tensors",
    "combine_task_vectors",
    "compute_dtype",
    "disjoint_merge",
    "generator_for",
    "is_excluded",
    "magnitude_mask",
    "majority_sign",
    "numerical_rank",
    "resolve_weights",
    "stack_task_vectors",
    "stack_tensors",
    "task_configs",
    "weight_column",
]

ConfigT = TypeVar("ConfigT")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensors(tensors: Sequence[Tensor], base: Tensor | None, *, method: str) -> None:
    """Check that ``tensors`` is a non-empty sequence of floating tensors of one shape, and ``base`` fits.

    Raises:
        TypeError: for something that is not a floating-point tensor.
        ConfigError: for no tensors or mismatched shapes.
    """
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"`tensors` must be a sequence of tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ConfigError(f"`tensors` must hold at least one tensor to merge with {method!r}, got none")
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"`tensors[{index}]` must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"`tensors[{index}]` must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.shape != tensors[0].shape:
            raise ConfigError(
                f"`tensors[{index}]` has shape {list(tensor.shape)}, but `tensors[0]` has "
                f"{list(tensors[0].shape)}; every tensor must have the same shape"
            )
    if base is None:
        return
    if not isinstance(base, Tensor):
        raise TypeError(f"`base` must be a torch.Tensor or None, got {type(base).__name__}")
    if base.shape != tensors[0].shape:
        raise ConfigError(
            f"`base` has shape {list(base.shape)}, but the tensors to merge have {list(tensors[0].shape)}"
        )


def stack_tensors(tensors: Sequence[Tensor], *, method: str) -> Tensor:
    """Stack the models' tensors into one ``(T, *shape)`` tensor in the compute dtype."""
    check_tensors(tensors, None, method=method)
    dtype = compute_dtype(tensors[0].dtype)
    return torch.stack([tensor.to(dtype) for tensor in tensors])


def stack_task_vectors(
    base: Tensor | None, tensors: Sequence[Tensor], *, method: str
) -> tuple[Tensor, Tensor]:
    """θ_0 and the task vectors τ_t = θ_t − θ_0 stacked into one ``(T, *shape)`` tensor, in the compute dtype.

    Raises:
        ConfigError: when ``base`` is None (task-vector methods need the base model).
    """
    if base is None:
        raise ConfigError(f"merge method {method!r} works on task vectors and needs `base`, got None")
    check_tensors(tensors, base, method=method)
    dtype = compute_dtype(tensors[0].dtype)
    stacked = torch.stack([tensor.to(dtype) for tensor in tensors])
    base_c = base.to(device=stacked.device, dtype=dtype)
    return base_c, stacked.sub_(base_c)


def resolve_weights(
    weights: Sequence[float] | Tensor | None, count: int, *, default: float = 1.0
) -> list[float]:
    """Per-model weights w_t as a list of ``count`` finite floats (``default`` for each when None).

    Raises:
        ConfigError: for a wrong length or a non-finite weight.
        TypeError: for something that is not a sequence of numbers.
    """
    if weights is None:
        return [default] * count
    values = weights.tolist() if isinstance(weights, Tensor) else weights
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"`weights` must be a sequence of numbers or None, got {type(weights).__name__}")
    if len(values) != count:
        raise ConfigError(
            f"`weights` must hold one number per model ({count}), got {len(values)}: {values!r}"
        )
    result = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"`weights[{index}]` must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"`weights[{index}]` must be finite, got {value!r}")
        result.append(float(value))
    return result


def weight_column(weights: Sequence[float], like: Tensor) -> Tensor:
    """The weights as a ``(T, 1, ..., 1)`` tensor that broadcasts against a ``(T, *shape)`` stack."""
    column = torch.tensor(list(weights), dtype=like.dtype, device=like.device)
    return column.reshape(-1, *([1] * (like.dim() - 1)))


def numerical_rank(singular: Tensor, shape: Sequence[int], scale: Tensor | None = None) -> list[int]:
    """How many singular values of each matrix are numerically nonzero.

    A value counts when it exceeds scale · max(rows, cols) · ε of its dtype, where the scale is the largest
    singular value by default (NumPy's ``matrix_rank`` tolerance). The singular vectors of the other,
    numerically zero, values are arbitrary: they depend on the SVD routine, the device and the dtype. A method
    that keeps or orthogonalises singular vectors must drop them, or a rank-deficient task matrix (a LoRA
    update, an untouched layer) makes its result arbitrary too.

    Args:
        singular: singular values, descending along the last dimension: ``(r,)`` or ``(T, r)``.
        shape: the shape of the decomposed matrices; its last two entries are rows and columns.
        scale: the magnitude the rounding errors are relative to, one per matrix, when the decomposed matrix
            is a residual (a projection's remainder) whose own largest singular value may be rounding noise.

    Returns:
        One count per matrix (a list of one for a single matrix).
    """
    if scale is None:
        reference = singular.amax(dim=-1, keepdim=True)
    else:
        reference = scale.reshape(*singular.shape[:-1], 1)
    tolerance = reference * max(shape[-2:]) * torch.finfo(singular.dtype).eps
    return (singular > tolerance).sum(dim=-1).reshape(-1).tolist()


def generator_for(seed: int, key: str | None) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the parameter's name.

    Seeding per key (not once per merge) makes a random method's result for a parameter independent of the
    order in which parameters are visited and of how the checkpoint is sharded; drawing on the CPU makes it
    independent of the device the arithmetic runs on.
    """
    generator = torch.Generator()
    salt = zlib.crc32(key.encode()) if key else 0
    generator.manual_seed((seed * 1_000_003 + salt) % (2**63))
    return generator


def magnitude_mask(values: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries of largest magnitude (TIES "trim"; ties at the cut kept).

    At least one entry is kept when ``density > 0`` (``k = max(1, ⌊density · n⌋)``), none when it is 0.
    """
    count = values.numel()
    if density >= 1.0:
        return torch.ones_like(values, dtype=torch.bool)
    if density <= 0.0 or count == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    keep = max(1, int(density * count))
    magnitudes = values.abs().reshape(-1)
    # kthvalue is a linear-time selection; a full sort of a 58M-entry MLP matrix costs seconds.
    threshold = torch.kthvalue(magnitudes, count - keep + 1).values
    return values.abs() >= threshold


def majority_sign(deltas: Tensor, method: str = "sum") -> Tensor:
    """TIES "elect": the sign γ = sgn(Σ_t τ_t) per entry ("sum", mass) or by vote count ("count").

    Ties (a zero sum) elect +1, as mergekit does, so every entry has a sign of ±1.
    """
    if method == "sum":
        total = deltas.sum(dim=0)
    elif method == "count":
        total = deltas.sign().sum(dim=0)
    else:
        raise ConfigError(f"`majority_sign` must be one of 'sum', 'count', got {method!r}")
    return torch.where(total >= 0, 1.0, -1.0).to(deltas.dtype)


def disjoint_merge(
    weighted: Tensor, weights: Sequence[float], mask: Tensor | None, *, normalize: bool
) -> Tensor:
    """TIES "disjoint merge": Σ_t m_t w_t τ_t, divided by Σ_t m_t w_t when ``normalize`` (a zero sum → 1).

    Args:
        weighted: the stack of weighted task vectors w_t τ_t, shape ``(T, *shape)``; masked in place.
        weights: w_t.
        mask: boolean ``(T, *shape)``: which entries take part; None for all.
        normalize: divide by the weight mass that took part in each entry (the disjoint mean).
    """
    if mask is None:
        merged = weighted.sum(dim=0)
        return merged.div_(sum(weights)) if normalize and abs(sum(weights)) >= 1e-12 else merged
    merged = weighted.mul_(mask).sum(dim=0)
    if not normalize:
        return merged
    # Summed task by task: a float copy of the whole (T, *shape) mask would cost T times the parameter.
    divisor = torch.zeros_like(merged)
    for weight, kept in zip(weights, mask, strict=True):
        divisor.add_(kept.to(divisor.dtype), alpha=weight)
    divisor = torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return merged.div_(divisor)


def combine_task_vectors(
    base: Tensor,
    deltas: Tensor,
    weights: Sequence[float],
    *,
    scaling: float,
    normalize: bool,
    sign_method: str | None,
) -> Tensor:
    """θ_0 + λ · merge(w_t τ_t): a plain sum, or TIES's sign election and disjoint merge.

    This is the last step shared by task arithmetic, TIES, DARE, Model Breadcrumbs and DELLA once each has
    sparsified its task vectors. Works in place on ``deltas`` so that peak memory stays near one copy of it.

    Args:
        base: θ_0 in the compute dtype.
        deltas: the (sparsified) task vectors τ_t, shape ``(T, *shape)``; modified in place.
        weights: w_t.
        scaling: λ.
        normalize: divide by the weight mass that took part (Σ_t w_t, or Σ_t m_t w_t with sign election).
        sign_method: None for a plain sum; "sum" or "count" to elect a sign per entry and keep only the task
            vectors that agree with it (TIES Eq. "elect" and "disjoint merge").
    """
    weighted = deltas.mul_(weight_column(weights, deltas))
    mask = None
    if sign_method is not None:
        positive = majority_sign(weighted, sign_method) > 0
        mask = torch.where(positive, weighted > 0, weighted < 0)
    merged = disjoint_merge(weighted, weights, mask, normalize=normalize)
    return merged.mul_(scaling).add_(base)


def is_excluded(key: str | None, patterns: Sequence[str]) -> bool:
    """Whether a parameter name matches one of the ``exclude_keys`` patterns (``re.search``)."""
    return key is not None and any(re.search(pattern, key) for pattern in patterns)


def task_configs(config: ConfigT, model_configs: Sequence[Any] | None, count: int) -> list[ConfigT]:
    """One config per model: ``model_configs`` (each model's own density, ...) or ``config`` for every model.

    Raises:
        ConfigError: for a wrong number of per-model configs or one of another class.
    """
    if model_configs is None:
        return [config] * count
    if isinstance(model_configs, str | bytes) or not isinstance(model_configs, Sequence):
        raise TypeError(f"`model_configs` must be a sequence of configs, got {type(model_configs).__name__}")
    if len(model_configs) != count:
        raise ConfigError(
            f"`model_configs` must hold one config per model ({count}), got {len(model_configs)}"
        )
    for index, item in enumerate(model_configs):
        if type(item) is not type(config):
            raise TypeError(
                f"`model_configs[{index}]` must be a {type(config).__name__}, got {type(item).__name__}"
            )
    return list(model_configs)
