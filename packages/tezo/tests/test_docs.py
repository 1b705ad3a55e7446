"""The quick starts in README.md and docs/index.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    """Each distinct python block once (the README repeats the docs' first quick start)."""
    found: dict[str, str] = {}
    for page in (PACKAGE / "README.md", PACKAGE / "docs" / "index.md"):
        for number, code in enumerate(BLOCK.findall(page.read_text())):
            found.setdefault(code, f"{page.name}:{number}")
    return [(where, code) for code, where in found.items()]


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[where for where, _ in _blocks()])
def test_quick_start_runs(where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__quick_start__"})
