"""Parameter settings of a recipe, as in mergekit: a value, a gradient over layers, or values by filter.

A setting is one of:

- a scalar: ``0.5``, ``true``, ``"sum"``;
- a gradient, a list of scalars: numbers are interpolated linearly over the layers of the slice being merged
  (the first value at the first layer, the last at the last; ``[0, 0.5, 1]`` gives 0.25 a quarter of the way),
  booleans and strings are picked, not interpolated;
- a conditional, ``{filter: self_attn, value: SETTING}``, or a list of them: the first whose ``filter`` is a
  substring of the parameter's name (or is absent, or ``"*"``) gives the value; when none matches, the setting
  says nothing and the next scope decides (a model's own parameters, then the slice's, then the recipe's, then
  the method's default).

The layer position t of a parameter is i / (n − 1) for layer i of the n layers of its slice (t = 1 when
n = 1) and t = 0 for parameters outside the layers (embeddings, the final norm, the LM head), as in mergekit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = ["check_setting", "evaluate_setting", "resolve", "setting_leaves"]

_SCALARS = (bool, int, float, str)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS) and not (isinstance(value, float) and not math.isfinite(value))


def check_setting(name: str, value: Any, where: str) -> None:
    """Check the structure of one setting (the values themselves are checked by the method's config).

    Args:
        name: the parameter's name, for messages.
        value: the setting as read from YAML.
        where: where it was given (```parameters```, ``the parameters of model './a'``), for messages.

    Raises:
        ConfigError: naming the parameter, where it was given and what is allowed.
    """
    label = f"`{name}` in {where}"
    if _is_scalar(value):
        return
    if isinstance(value, Mapping):
        _check_conditional(label, value)
        return
    if isinstance(value, list) and value:
        if all(_is_scalar(item) for item in value):
            return
        if all(isinstance(item, Mapping) for item in value):
            for item in value:
                _check_conditional(label, item)
            return
    raise ConfigError(
        f"{label} must be a finite number, true/false or a string; a non-empty list of those (a gradient "
        f"over layers); or {{filter: NAME, value: ...}} conditionals; got {value!r}"
    )


def _check_conditional(label: str, item: Mapping[str, Any]) -> None:
    extra = sorted(set(item) - {"filter", "value"})
    if extra or "value" not in item:
        raise ConfigError(
            f"{label}: a conditional takes `value` and an optional `filter`, got keys {sorted(item)!r}"
        )
    if item.get("filter") is not None and not isinstance(item["filter"], str):
        raise ConfigError(
            f"{label}: `filter` must be a string (a substring of parameter names), got {item['filter']!r}"
        )
    value = item["value"]
    if not (_is_scalar(value) or (isinstance(value, list) and value and all(_is_scalar(v) for v in value))):
        raise ConfigError(
            f"{label}: a conditional's `value` must be a scalar or a gradient list, got {value!r}"
        )


def evaluate_setting(value: Any, key: str, position: float) -> Any:
    """The value a setting gives the parameter ``key`` at layer position ``position`` (None: says nothing)."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return value
    if all(isinstance(item, Mapping) for item in value):
        for item in value:
            pattern = item.get("filter")
            if pattern is None or pattern == "*" or pattern in key:
                return evaluate_setting(item["value"], key, position)
        return None
    numeric = all(isinstance(item, int | float) and not isinstance(item, bool) for item in value)
    if not numeric:
        return value[int(position * (len(value) - 1))]
    scaled = position * (len(value) - 1)
    low = int(scaled)
    high = min(len(value) - 1, low + 1)
    fraction = scaled - low
    if fraction == 0:
        return value[low]
    return (1 - fraction) * value[low] + fraction * value[high]


def setting_leaves(value: Any) -> Iterator[Any]:
    """Every scalar a setting can give (the endpoints of its gradients), to check them before merging."""
    if isinstance(value, Mapping):
        yield from setting_leaves(value["value"])
    elif isinstance(value, list):
        for item in value:
            yield from setting_leaves(item)
    else:
        yield value


def resolve(
    name: str, scopes: Iterable[Mapping[str, Any]], key: str, position: float, *, literal: bool = False
) -> Any:
    """The first value a scope's setting of ``name`` gives (scopes from the most specific), or None.

    With ``literal`` (a list-valued parameter such as ``exclude_keys``) the setting is the value itself.
    """
    for scope in scopes:
        if name in scope:
            result = scope[name] if literal else evaluate_setting(scope[name], key, position)
            if result is not None:
                return result
    return None
