"""Run the Python examples of Markdown pages (a package's README quick start) as tests.

Examples:
    A package's ``tests/test_docs.py`` (pytest collects the returned, parametrized test)::

        from paperpack.core.testing.examples import quick_start_test

        test_quick_start_runs = quick_start_test(__file__)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["documented_examples", "python_blocks", "quick_start_test", "run_example"]

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: str | os.PathLike[str]) -> list[str]:
    """The fenced ```` ```python ```` blocks of a Markdown file, in order."""
    return _BLOCK.findall(Path(path).read_text(encoding="utf-8"))


def documented_examples(
    package_dir: str | os.PathLike[str], pages: Sequence[str] = ("README.md", "docs/index.md")
) -> list[tuple[str, str]]:
    """Each distinct Python block of ``pages`` (relative to ``package_dir``) once, as ``(where, code)``.

    ``where`` is ``"<page>:<block number>"`` at the block's first appearance, so a quick start that the README
    and the docs' index share runs once. Pages that do not exist are skipped.
    """
    found: dict[str, str] = {}
    for page in pages:
        path = Path(package_dir) / page
        if path.is_file():
            for number, code in enumerate(python_blocks(path)):
                found.setdefault(code, f"{page}:{number}")
    return [(where, code) for code, where in found.items()]


def run_example(code: str, where: str, *, cwd: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute ``code`` as a fresh module with ``cwd`` as the working directory; returns its namespace.

    The working directory is restored afterwards, so files the example writes stay in ``cwd``.
    """
    namespace: dict[str, Any] = {"__name__": "__example__"}
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        exec(compile(code, where, "exec"), namespace)
    finally:
        os.chdir(previous)
    return namespace


def quick_start_test(
    test_file: str | os.PathLike[str],
    pages: Sequence[str] = ("README.md", "docs/index.md"),
    *,
    marks: Sequence[Any] = (),
) -> Callable[..., None]:
    """A pytest test that runs every example of ``pages`` of the package whose ``tests/`` holds ``test_file``.

    Each distinct example is one parametrized case (id ``"<page>:<block number>"``), run in its own temporary
    working directory.

    Args:
        test_file: the calling test module's ``__file__`` (the package is its folder's parent).
        pages: the Markdown pages, relative to the package.
        marks: pytest marks for the test, e.g. ``[pytest.mark.slow]``.
    """
    import pytest

    examples = documented_examples(Path(test_file).resolve().parents[1], pages)

    @pytest.mark.parametrize(("where", "code"), examples, ids=[where for where, _ in examples])
    def test_quick_start_runs(where: str, code: str, tmp_path: Path) -> None:
        run_example(code, where, cwd=tmp_path)

    for mark in marks:
        test_quick_start_runs = mark(test_quick_start_runs)
    return test_quick_start_runs
