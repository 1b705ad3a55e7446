"""Passthrough: copy one model's tensor, optionally scaled (mergekit's method for stacking layer slices)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm.config import PassthroughConfig
from paperpack.r_tsvm.methods._common import check_tensors, compute_dtype, task_configs

__all__ = ["passthrough_merge"]


def passthrough_merge(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    config: PassthroughConfig | None = None,
    key: str | None = None,
    model_configs: Sequence[PassthroughConfig] | None = None,
) -> Tensor:
    """The one model's tensor times ``scale`` (``base`` is not used).

    Args:
        base: ignored; accepted so every method has one signature.
        tensors: exactly one tensor.
        weights: must be None.
        config: :class:`PassthroughConfig`.
        key: the parameter's name (unused).
        model_configs: the model's own config (its ``scale``), as given per model in a recipe.

    Returns:
        The tensor (a copy), scaled, in its dtype.

    Examples:
        >>> import torch
        >>> passthrough_merge(None, [torch.ones(2)], config=PassthroughConfig(scale=0.5)).tolist()
        [0.5, 0.5]
    """
    del base, key
    config = config or PassthroughConfig()
    if len(tensors) != 1:
        raise ConfigError(f"passthrough takes exactly 1 model per tensor, got {len(tensors)}")
    if weights is not None:
        raise ConfigError(f"passthrough takes no `weights` (use `scale`), got {weights!r}")
    check_tensors(tensors, None, method="passthrough")
    (scale,) = (item.scale for item in task_configs(config, model_configs, 1))
    tensor = tensors[0]
    if scale == 1.0:
        return tensor.clone()
    return (tensor.to(compute_dtype(tensor.dtype)) * scale).to(tensor.dtype)
