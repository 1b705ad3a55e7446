"""The quick starts of the README and of the docs run as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from paperpack.core.testing.examples import python_blocks, quick_start_test

PACKAGE = Path(__file__).resolve().parents[1]

test_quick_start_runs = quick_start_test(__file__, marks=[pytest.mark.slow])


def test_docs_pretraining_quick_start_is_the_readme_one() -> None:
    assert python_blocks(PACKAGE / "docs/index.md")[0] == python_blocks(PACKAGE / "README.md")[0]
