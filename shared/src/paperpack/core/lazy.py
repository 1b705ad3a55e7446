"""Lazy public APIs: a package's ``__init__`` names each export once; nothing is imported until used.

Importing ``paperpack.<name>.cli`` runs ``paperpack/<name>/__init__.py`` first, so an ``__init__`` that
imported torch would make ``paperpack <name> --help`` take seconds. With :func:`lazy_exports`, the one table
of public names is the ``if TYPE_CHECKING:`` block of imports: type checkers and documentation tools read the
real imports there, and at run time each name is imported from its module on first access; ``__all__`` is
built from the same block.

Examples:
    A package's ``__init__.py`` (the redundant ``as`` marks an explicit re-export, as PEP 484 and
    ``mypy --strict`` want)::

        from typing import TYPE_CHECKING

        from paperpack.core.lazy import lazy_exports

        if TYPE_CHECKING:
            from paperpack.sewa.callback import SeWACallback as SeWACallback
            from paperpack.sewa.config import SeWAConfig as SeWAConfig

        __getattr__, __dir__ = lazy_exports(__name__)
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports", "type_checking_imports"]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return str(node.module)
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def type_checking_imports(source: str, package: str) -> dict[str, tuple[str, str]]:
    r"""The names a module's ``if TYPE_CHECKING:`` blocks import: public name -> (module, name there).

    Args:
        source: the module's source.
        package: the module's ``__name__`` (a package's ``__init__``), to resolve relative imports.

    Raises:
        TypeError: for an import the table cannot hold (``import x`` or ``from x import *``), or a name
            imported twice.

    Examples:
        >>> from paperpack.core.lazy import type_checking_imports
        >>> code = "if TYPE_CHECKING:\n    from .config import SeWAConfig as SeWAConfig\n"
        >>> type_checking_imports(code, "paperpack.sewa")
        {'SeWAConfig': ('paperpack.sewa.config', 'SeWAConfig')}
    """
    table: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom):
                raise TypeError(
                    f"{package}: only `from module import name` belongs in the TYPE_CHECKING table"
                )
            module = _absolute(statement, package)
            for alias in statement.names:
                if alias.name == "*":
                    raise TypeError(f"{package}: `from {module} import *` cannot be exported lazily")
                public = alias.asname or alias.name
                if public in table:
                    raise TypeError(f"{package}: {public!r} is imported twice under TYPE_CHECKING")
                table[public] = (module, alias.name)
    return table


def lazy_exports(
    package: str, exports: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` that import each export from its module on first use.

    The exports are read from the calling module's ``if TYPE_CHECKING:`` imports (see the module docstring),
    and the module's ``__all__`` is set to them, sorted. A package that already has the table in code may pass
    ``exports`` (public name -> module) instead.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it; None reads the TYPE_CHECKING imports.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.

    Raises:
        TypeError: when the table cannot be read (see :func:`type_checking_imports`) or is empty.
    """
    module = sys.modules[package]
    if exports is None:
        source = Path(str(module.__file__)).read_text(encoding="utf-8")
        table = type_checking_imports(source, package)
        if not table:
            raise TypeError(f"{package} has no `if TYPE_CHECKING:` imports to export")
    else:
        table = {name: (path, name) for name, path in exports.items()}
    if not hasattr(module, "__all__"):
        module.__all__ = sorted(table)  # type: ignore[attr-defined]

    def get_attribute(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path, original = table[name]
        value = getattr(importlib.import_module(path), original)
        setattr(module, name, value)  # later lookups skip __getattr__
        return value

    def list_attributes() -> list[str]:
        return sorted({*vars(module), *table})

    return get_attribute, list_attributes
