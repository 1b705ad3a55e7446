"""A small typed registry: methods, commands and demos join by one explicit, validated call.

Examples:
    >>> from paperpack.core.registry import Registry
    >>> methods: Registry[str] = Registry("merge method")
    >>> methods.register("ties", "TIES merging")
    >>> methods.get("ties")
    'TIES merging'
    >>> methods.get("tie")
    Traceback (most recent call last):
    ...
    paperpack.core.errors.ConfigError: unknown merge method 'tie'; available: ties
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from paperpack.core.errors import ConfigError

__all__ = ["NAME_PATTERN", "Registry"]

T = TypeVar("T")

#: Names are lowercase, start with a letter and use letters, digits, ``-`` and ``_``.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")


class Registry(Generic[T]):
    """Maps names to objects of one kind, refusing malformed and duplicate names.

    Args:
        kind: what the registry holds, used in error messages ("merge method", "demo").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: T) -> None: ...

    @overload
    def register(self, name: str, obj: None = None) -> Callable[[T], T]: ...

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | None:
        """Add ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Raises:
            ConfigError: when ``name`` is malformed or already taken.
        """
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError(
                f"{self.kind} name {name!r} is malformed: use lowercase letters, digits, '-' and '_', "
                "starting with a letter"
            )
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered; pick another name")
        if obj is None:

            def decorator(item: T) -> T:
                self._entries[name] = item
                return item

            return decorator
        self._entries[name] = obj
        return None

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            ConfigError: naming the unknown name and every available one.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            available = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
