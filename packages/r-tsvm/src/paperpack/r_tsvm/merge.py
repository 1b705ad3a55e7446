"""Merging in memory: one parameter (``merge_tensors``) or whole state dicts (``merge_state_dicts``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.r_tsvm.registry import MergeMethod, get_method

__all__ = ["merge_state_dicts", "merge_tensors", "resolve_method"]


def resolve_method(method: str | MergeMethod) -> MergeMethod:
    """The registered method of that name, or ``method`` itself.

    Raises:
        ConfigError: for an unknown name.
        TypeError: for something that is neither.
    """
    if isinstance(method, MergeMethod):
        return method
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a method name or a MergeMethod, got {type(method).__name__}")
    return get_method(method)


def merge_tensors(
    method: str | MergeMethod,
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    statistics: Sequence[Tensor] | None = None,
    key: str | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    **params: Any,
) -> Tensor:
    """Merge one parameter of several models.

    This is the stable entry point for code that merges tensors itself (a router, a custom checkpoint walk):
    every registered method, by name, with its parameters as keywords.

    Args:
        method: a registered method name (see :func:`~paperpack.r_tsvm.list_methods`).
        base: the base model's tensor θ_0 (None for methods that need none: linear, slerp, fisher, regmean).
        tensors: the fine-tuned models' tensors θ_1..θ_T, same shape.
        weights: one weight per model (each method documents its default).
        statistics: for ``fisher`` the diagonal Fishers, for ``regmean`` the input Gram matrices, one
            per model.
        key: the parameter's name: matched against ``exclude_keys`` and mixed into random seeds.
        model_params: one mapping per model of its own values for the method's per-model parameters
            (:attr:`MergeMethod.per_model <paperpack.r_tsvm.MergeMethod>`, e.g. ``[{"density": 0.3},
            {"density": 0.6}]`` for ``ties``); None gives every model the shared values.
        **params: the method's config fields (e.g. ``density=0.2`` for ``ties``).

    Returns:
        The merged tensor, in the dtype of ``tensors[0]``; the inputs are not modified.

    Raises:
        ConfigError: for an unknown method or parameter, a bad value, or inputs the method cannot take.
        TypeError: for inputs that are not floating-point tensors.

    Examples:
        >>> import torch
        >>> from paperpack.r_tsvm import merge_tensors
        >>> base = torch.zeros(4)
        >>> models = [torch.tensor([1.0, 0.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, -2.0, -1.0])]
        >>> merge_tensors("task_arithmetic", base, models, scaling=0.5).tolist()
        [1.0, 0.5, 0.0, -1.0]
    """
    spec = resolve_method(method)
    config = spec.make_config(params)
    return spec(
        base,
        tensors,
        weights=weights,
        config=config,
        key=key,
        statistics=statistics,
        model_params=model_params,
    )


def _check_state_dicts(
    base: Mapping[str, Tensor] | None, state_dicts: Sequence[Mapping[str, Tensor]]
) -> Mapping[str, Tensor]:
    if isinstance(state_dicts, Mapping) or not isinstance(state_dicts, Sequence) or not state_dicts:
        raise ConfigError("`state_dicts` must be a non-empty list of state dicts (one per fine-tuned model)")
    named: list[tuple[str, Mapping[str, Tensor]]] = [
        (f"state_dicts[{i}]", sd) for i, sd in enumerate(state_dicts)
    ]
    if base is not None:
        named.insert(0, ("base", base))
    for name, state in named:
        if not isinstance(state, Mapping):
            raise TypeError(
                f"`{name}` must be a mapping of parameter names to tensors, got {type(state).__name__}"
            )
    reference_name, reference = named[0]
    for name, state in named[1:]:
        missing = [key for key in reference if key not in state]
        extra = [key for key in state if key not in reference]
        if missing or extra:
            key, has, lacks = (
                (missing[0], reference_name, name) if missing else (extra[0], name, reference_name)
            )
            raise CheckpointError(
                f"state dicts have different keys: {key!r} is in `{has}` but not in `{lacks}` "
                f"({len(missing) + len(extra)} such key(s))"
            )
        for key, tensor in reference.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{key!r} has shape {list(tensor.shape)} in `{reference_name}` but "
                    f"{list(state[key].shape)} "
                    f"in `{name}`"
                )
    return reference


def merge_state_dicts(
    method: str | MergeMethod,
    base: Mapping[str, Tensor] | None,
    state_dicts: Sequence[Mapping[str, Tensor]],
    *,
    weights: Sequence[float] | None = None,
    statistics: Sequence[Mapping[str, Tensor]] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = False,
    **params: Any,
) -> dict[str, Tensor]:
    """Merge whole state dicts held in memory, parameter by parameter (for small models and tests).

    Non-floating tensors (integer buffers) are taken from the base model, or from the first model when the
    method uses no base. For checkpoints on disk use :func:`~paperpack.r_tsvm.merge_checkpoints`,
    which streams.

    Args:
        method: a registered method name.
        base: the base model's state dict (None for methods that need none).
        state_dicts: the fine-tuned models' state dicts, with the same keys and shapes.
        weights: one weight per model.
        statistics: for ``fisher`` / ``regmean``, one mapping per model from parameter name to its Fisher or
            Gram matrix (regmean averages parameters without one).
        model_params: one mapping per model of its own values for the method's per-model parameters.
        progress: show a progress bar over parameters.
        **params: the method's config fields.

    Returns:
        A new state dict; the inputs are not modified.

    Raises:
        ConfigError: for an unknown method or parameter or a bad value (before any tensor is merged).
        CheckpointError: for state dicts whose keys or shapes differ.

    Examples:
        >>> import torch
        >>> from paperpack.r_tsvm import merge_state_dicts
        >>> base = {"w": torch.zeros(2, 2)}
        >>> models = [{"w": torch.eye(2)}, {"w": -torch.eye(2)}]
        >>> merge_state_dicts("linear", None, models)["w"].tolist()
        [[0.0, 0.0], [0.0, 0.0]]
    """
    spec = resolve_method(method)
    config = spec.make_config(params)
    if not spec.uses_base:
        base = None
    reference = _check_state_dicts(base, state_dicts)
    spec.check_inputs(
        has_base=base is not None, count=len(state_dicts), has_statistics=statistics is not None
    )
    spec.model_configs(config, model_params, len(state_dicts))  # checked before any tensor is merged
    if statistics is not None and (
        not isinstance(statistics, Sequence) or len(statistics) != len(state_dicts)
    ):
        raise ConfigError(f"`statistics` must hold one mapping per model ({len(state_dicts)})")
    merged: dict[str, Tensor] = {}
    for key in tqdm(list(reference), desc="merging", unit="tensor", disable=not progress):
        tensors = [state[key] for state in state_dicts]
        if not reference[key].is_floating_point():
            merged[key] = reference[key].clone()
            continue
        stats = _statistics_for(spec, key, statistics)
        merged[key] = spec(
            None if base is None else base[key],
            tensors,
            weights=weights,
            config=config,
            key=key,
            statistics=stats,
            model_params=model_params,
        )
    return merged


def _statistics_for(
    spec: MergeMethod, key: str, statistics: Sequence[Mapping[str, Tensor]] | None
) -> list[Tensor] | None:
    if statistics is None:
        return None
    present = [key in stats for stats in statistics]
    if all(present):
        return [stats[key] for stats in statistics]
    if spec.statistic == "gram" and not any(present):
        return None
    missing = present.index(False)
    raise CheckpointError(f"`statistics[{missing}]` has no {spec.statistic} for {key!r}")
