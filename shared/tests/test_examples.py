"""The core's own quick starts run as written, and the example runner used by every package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from paperpack.core.testing.examples import documented_examples, python_blocks, quick_start_test, run_example

test_quick_start_runs = quick_start_test(__file__)


def test_blocks_are_found_once_and_run_in_their_folder(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    write = 'from pathlib import Path\nPath("out.txt").write_text("ok")\n'
    page.write_text(
        f"# x\n\n```python\n{write}```\n\n```console\n$ ls\n```\n\n```python\nvalue = 2 + 2\n```\n"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"```python\n{write}```\n")
    assert python_blocks(page) == [write, "value = 2 + 2\n"]
    examples = documented_examples(tmp_path)
    assert [where for where, _ in examples] == ["README.md:0", "README.md:1"]
    work = tmp_path / "work"
    work.mkdir()
    before = Path.cwd()
    assert run_example(examples[1][1], "README.md:1", cwd=work)["value"] == 4
    run_example(examples[0][1], "README.md:0", cwd=work)
    assert (work / "out.txt").read_text() == "ok" and Path.cwd() == before


def test_a_failing_example_names_its_page_and_restores_the_folder(tmp_path: Path) -> None:
    before = Path.cwd()
    with pytest.raises(ZeroDivisionError) as error:
        run_example("x = 1\ny = x / 0\n", "README.md:3", cwd=tmp_path)
    assert str(error.traceback[-1].path) == "README.md:3" and error.traceback[-1].lineno == 1  # 0-based
    assert Path.cwd() == before
