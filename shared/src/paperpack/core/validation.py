"""Argument checks that raise :class:`~paperpack.core.errors.ConfigError` with a message naming the argument.

Configs call these in ``__post_init__`` so that a bad value fails at construction, before any work starts.

Example:
    >>> from paperpack.core.validation import check_choice
    >>> check_choice("strategy", "lawa", ["uniform", "lawa", "ema"])
    >>> check_choice("strategy", "swa", ["uniform", "lawa", "ema"])
    Traceback (most recent call last):
    ...
    paperpack.core.errors.ConfigError: `strategy` must be one of 'uniform', 'lawa', 'ema', got 'swa'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = ["check_choice", "check_int", "check_positive", "check_probability", "check_range"]


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"`{name}` must be a number, got {value!r} ({type(value).__name__})")
    if math.isnan(value):
        raise ConfigError(f"`{name}` must be a number, got NaN")
    return float(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Check that ``value`` is a number > 0 (or >= 0 with ``allow_zero``).

    Raises:
        ConfigError: when it is not a number or not positive.
    """
    number = _check_real(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"`{name}` must be {bound}, got {value!r}")


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    """Check that ``value`` is an int (not a bool) within ``[minimum, maximum]``.

    Raises:
        ConfigError: when it is not an int or lies outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"`{name}` must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"`{name}` must be <= {maximum}, got {value}")


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Check that ``value`` lies in the interval from ``low`` to ``high``.

    Raises:
        ConfigError: naming the interval in mathematical notation, e.g. ``[0, 1)``.
    """
    number = _check_real(name, value)
    above = number >= low if low_inclusive else number > low
    below = number <= high if high_inclusive else number < high
    if not (above and below):
        interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
        raise ConfigError(f"`{name}` must be in {interval}, got {value!r}")


def check_probability(name: str, value: Any) -> None:
    """Check that ``value`` lies in ``[0, 1]``."""
    check_range(name, value, 0.0, 1.0)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Check that ``value`` is one of ``choices``.

    Raises:
        ConfigError: listing every allowed value.
    """
    allowed = list(choices)
    if value not in allowed:
        listed = ", ".join(repr(choice) for choice in allowed)
        raise ConfigError(f"`{name}` must be one of {listed}, got {value!r}")
