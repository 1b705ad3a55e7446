"""The quick starts of the README and of the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("document", "index", "output"),
    [("README.md", 0, "meap-out"), ("docs/index.md", 1, "meap-sft")],
)
def test_quick_start_runs(
    document: str, index: int, output: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks(PACKAGE / document)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "quick_start"}
    exec(compile(blocks[index], str(PACKAGE / document), "exec"), namespace)
    assert (tmp_path / output).is_dir()


def test_docs_pretraining_quick_start_is_the_readme_one() -> None:
    assert python_blocks(PACKAGE / "docs/index.md")[0] == python_blocks(PACKAGE / "README.md")[0]
