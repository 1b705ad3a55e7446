"""Argument checks that raise :class:`~paperpack.core.errors.ConfigError` with a message naming the argument.

Configs call these in ``__post_init__`` so that a bad value fails at construction, before any work starts.
Every message has one shape: ``` `name` must be <what is allowed>, got <value> ```. The command line turns the
backquoted name into the flag the user typed (``--rank`` rather than ``zo_rank``), so name the field.

Choices are spelled one way: a ``Literal[...]`` type on the field (the command line reads its choices from
it), checked with :func:`check_literal_fields` or :func:`check_literal`.

Examples:
    >>> from typing import Literal
    >>> from paperpack.core.validation import check_literal, check_number
    >>> Strategy = Literal["uniform", "lawa", "ema"]
    >>> check_literal("strategy", "swa", Strategy)
    Traceback (most recent call last):
    ...
    paperpack.core.errors.ConfigError: `strategy` must be one of 'uniform', 'lawa', 'ema', got 'swa'
    >>> check_number("beta1", 1.5, minimum=0, less_than=1)
    Traceback (most recent call last):
    ...
    paperpack.core.errors.ConfigError: `beta1` must be in [0, 1), got 1.5
"""

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = [
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_literal",
    "check_literal_fields",
    "check_number",
    "check_patterns",
    "check_positive",
    "check_probability",
    "check_range",
    "literal_choices",
]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    greater_than: float | None = None,
    less_than: float | None = None,
    integer: bool = False,
    finite: bool = True,
) -> None:
    """Check that ``value`` is a number (not a bool) within the given bounds.

    Args:
        name: the argument, as the message should name it.
        value: the value to check.
        minimum: ``value >= minimum``.
        maximum: ``value <= maximum``.
        greater_than: ``value > greater_than`` (instead of ``minimum``).
        less_than: ``value < less_than`` (instead of ``maximum``).
        integer: require an ``int``.
        finite: refuse NaN and infinities (the default); with False only NaN is refused.

    Raises:
        ConfigError: naming the argument, what is allowed (``> 0``, ``in [0, 1)``) and the value.
        TypeError: when both bounds of one side are given (a programming error).

    Examples:
        >>> from paperpack.core.validation import check_number
        >>> check_number("learning_rate", 1e-5, greater_than=0)
        >>> check_number("learning_rate", float("nan"), greater_than=0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `learning_rate` must be a finite number, got nan
        >>> check_number("max_steps", 0, minimum=1, integer=True)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `max_steps` must be >= 1, got 0
    """
    if minimum is not None and greater_than is not None:
        raise TypeError("give `minimum` or `greater_than`, not both")
    if maximum is not None and less_than is not None:
        raise TypeError("give `maximum` or `less_than`, not both")
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"`{name}` must be an integer, got {value!r} ({_type_name(value)})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"`{name}` must be a number, got {value!r} ({_type_name(value)})")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
    low = minimum if minimum is not None else greater_than
    high = maximum if maximum is not None else less_than
    above = low is None or (value >= low if minimum is not None else value > low)
    below = high is None or (value <= high if maximum is not None else value < high)
    if above and below:
        return
    if low is not None and high is not None:
        opening, closing = "[" if minimum is not None else "(", "]" if maximum is not None else ")"
        allowed = f"in {opening}{_bound(low)}, {_bound(high)}{closing}"
    elif low is not None:
        allowed = f"{'>=' if minimum is not None else '>'} {_bound(low)}"
    else:
        assert high is not None
        allowed = f"{'<=' if maximum is not None else '<'} {_bound(high)}"
    raise ConfigError(f"`{name}` must be {allowed}, got {value!r}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Check that ``value`` is a finite number > 0 (or >= 0 with ``allow_zero``).

    Raises:
        ConfigError: when it is not a finite number or not positive.
    """
    if allow_zero:
        check_number(name, value, minimum=0)
    else:
        check_number(name, value, greater_than=0)


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    """Check that ``value`` is an int (not a bool) within ``[minimum, maximum]``.

    Raises:
        ConfigError: when it is not an int or lies outside the bounds.
    """
    # Each bound is reported on its own ("must be <= 5"), as callers' messages have always read.
    check_number(name, value, minimum=minimum, integer=True)
    check_number(name, value, maximum=maximum, integer=True)


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
    check_number(
        name,
        value,
        minimum=low if low_inclusive else None,
        greater_than=None if low_inclusive else low,
        maximum=high if high_inclusive else None,
        less_than=None if high_inclusive else high,
        finite=False,
    )


def check_probability(name: str, value: Any) -> None:
    """Check that ``value`` lies in ``[0, 1]``."""
    check_range(name, value, 0.0, 1.0)


def check_bool(name: str, value: Any) -> None:
    """Check that ``value`` is ``True`` or ``False`` (not 0, 1 or a string).

    Raises:
        ConfigError: naming the argument and the value.

    Examples:
        >>> from paperpack.core.validation import check_bool
        >>> check_bool("normalize", "yes")
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `normalize` must be true or false, got 'yes' (str)
    """
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be true or false, got {value!r} ({_type_name(value)})")


def check_patterns(name: str, patterns: Any) -> list[re.Pattern[str]]:
    r"""Check a list of regular expressions and return them compiled.

    Raises:
        ConfigError: for a single string or a non-list, an entry that is not a string, or an invalid pattern.

    Examples:
        >>> from paperpack.core.validation import check_patterns
        >>> [p.pattern for p in check_patterns("exclude_keys", [r"bias$", "norm"])]
        ['bias$', 'norm']
        >>> check_patterns("keys", ["a("])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `keys` holds an invalid regular expression 'a(': missing ), ...
    """
    if isinstance(patterns, str | bytes) or not isinstance(patterns, list | tuple):
        raise ConfigError(f"`{name}` must be a list of regular expressions, got {patterns!r}")
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"`{name}` must hold strings, got {pattern!r} ({_type_name(pattern)})")
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ConfigError(f"`{name}` holds an invalid regular expression {pattern!r}: {error}") from None
    return compiled


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return hint


def literal_choices(hint: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type (``Literal[...] | None`` too).

    Raises:
        TypeError: when ``hint`` is not a Literal type.

    Examples:
        >>> from typing import Literal
        >>> from paperpack.core.validation import literal_choices
        >>> literal_choices(Literal["sum", "count"] | None)
        ('sum', 'count')
    """
    hint = _strip_optional(hint)
    if typing.get_origin(hint) is not typing.Literal:
        raise TypeError(f"expected a Literal[...] type, got {hint!r}")
    return typing.get_args(hint)


def _check_member(name: str, value: Any, choices: Iterable[Any]) -> None:
    allowed = list(choices)
    # `True in [1]` holds in Python; a bool is a choice only where a bool is listed.
    if any(value == choice and type(value) is type(choice) for choice in allowed):
        return
    listed = ", ".join(repr(choice) for choice in allowed)
    raise ConfigError(f"`{name}` must be one of {listed}, got {value!r}")


def check_literal(name: str, value: Any, hint: Any) -> None:
    """Check that ``value`` is one of the values of the ``Literal[...]`` type ``hint``.

    ``None`` passes when ``hint`` is ``Literal[...] | None``.

    Raises:
        ConfigError: listing every allowed value.
    """
    if value is None and _strip_optional(hint) is not hint:
        return
    _check_member(name, value, literal_choices(hint))


def check_literal_fields(config: Any) -> None:
    """Check every ``Literal[...]`` field of the dataclass instance ``config``; call it in ``__post_init__``.

    Raises:
        ConfigError: naming the first field whose value is not one of its choices.

    Examples:
        >>> from dataclasses import dataclass
        >>> from typing import Literal
        >>> from paperpack.core.validation import check_literal_fields
        >>> @dataclass
        ... class MergeConfig:
        ...     majority_sign: Literal["sum", "count"] = "sum"
        ...     def __post_init__(self):
        ...         check_literal_fields(self)
        >>> MergeConfig(majority_sign="total")
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `majority_sign` must be one of 'sum', 'count', got 'total'
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {config!r}")
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        hint = hints.get(item.name)
        if typing.get_origin(_strip_optional(hint)) is typing.Literal:
            check_literal(item.name, getattr(config, item.name), hint)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Check that ``value`` is one of ``choices``; for config fields prefer a ``Literal`` type.

    Raises:
        ConfigError: listing every allowed value.
    """
    _check_member(name, value, choices)


def _count_bad(tensor: Any) -> int:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a tensor, got {_type_name(tensor)}")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def check_finite(name: str, value: Any, *, hint: str = "") -> None:
    """Refuse a result that holds NaN or infinity: a number, a tensor, or a mapping of names to tensors.

    Call it on what a command is about to write (merged weights, a trained model's state dict, a summary
    number), so that an overflow is an error, not a file of ``inf``.

    Args:
        name: what the value is ("the merged weights", "train loss").
        value: a float, a tensor or a mapping of names to tensors (a state dict).
        hint: the likely cause and fix, appended to the message.

    Raises:
        ConfigError: naming the value, the first tensor that is not finite and how many entries are not.

    Examples:
        >>> import torch
        >>> from paperpack.core.validation import check_finite
        >>> state = {"w": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}
        >>> check_finite("weights", state)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: weights are not finite: 'b' holds 1 of 2 entries that are inf or...
    """
    suffix = f"; {hint}" if hint else ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{name} is not finite: {value!r}{suffix}")
        return
    items = value.items() if isinstance(value, Mapping) else [(None, value)]
    for key, tensor in items:
        bad = _count_bad(tensor)
        if bad:
            where = f"{key!r} holds" if key is not None else "it holds"
            verb = "are" if key is not None else "is"
            count = f"{bad} of {tensor.numel()} entries"
            raise ConfigError(f"{name} {verb} not finite: {where} {count} that are inf or nan{suffix}")
