"""Lazy public APIs: a package's ``__init__`` names its exports without importing them.

Importing ``paperpack.<name>.cli`` runs ``paperpack/<name>/__init__.py`` first, so an ``__init__`` that
imported torch would make ``paperpack <name> --help`` take seconds. With :func:`lazy_exports` each name is
imported on first access, and type checkers still see the real imports under ``TYPE_CHECKING``.

Example:
    A package's ``__init__.py``::

        from typing import TYPE_CHECKING

        from paperpack.core.lazy import lazy_exports

        if TYPE_CHECKING:
            from paperpack.sewa.config import SeWAConfig

        __all__ = ["SeWAConfig"]
        __getattr__, __dir__ = lazy_exports(__name__, {"SeWAConfig": "paperpack.sewa.config"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` that import each export from its module on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.
    """
    table = dict(exports)

    def get_attribute(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def list_attributes() -> list[str]:
        return sorted({*vars(sys.modules[package]), *table})

    return get_attribute, list_attributes
