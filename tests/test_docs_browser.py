"""The docs_browser checker fails on what it is meant to catch (the browser part runs where Chromium is)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("docs_browser", HERE / "docs_browser.py")
docs_browser = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_browser)

GOOD = """<html><body><h1 id="top">Title</h1><p>Math: <math><mi>x</mi></math></p>
<a href="other/">other</a> <a href="#top">top</a> <a href="https://example.org">web</a></body></html>"""
BROKEN = """<html><body><p>Raw \\(\\Delta_t\\) here, and <code>\\(kept\\)</code> in code.</p>
<a href="missing.html">gone</a> <a href="../index.html#nowhere">anchor</a>
<blockquote><blockquote><blockquote><p>import torch</p></blockquote></blockquote></blockquote>
<script>undefinedFunction();</script></body></html>"""


def site(tmp_path: Path) -> Path:
    root = tmp_path / "sites"
    (root / "paperpack" / "other").mkdir(parents=True)
    (root / "paperpack" / "index.html").write_text(GOOD)
    (root / "paperpack" / "other" / "index.html").write_text(BROKEN)
    return root


def test_links_and_anchors_are_checked_on_the_files(tmp_path):
    root = site(tmp_path)
    pages = sorted(root.rglob("*.html"))
    problems = docs_browser.check_links(root, pages, "http://127.0.0.1:1")
    assert problems == [
        "broken link paperpack/other/index.html: missing.html (no paperpack/other/missing.html)",
        "broken anchor paperpack/other/index.html: ../index.html#nowhere (no id 'nowhere' in paperpack/index.html)",
    ]


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromium and chromedriver (apt)")
def test_the_browser_sees_raw_math_and_script_errors(tmp_path, capsys):
    root = site(tmp_path)
    assert docs_browser.main(root) == 1
    out = capsys.readouterr().out
    assert "unrendered math paperpack/other/index.html: 'Raw \\\\(\\\\Delta_t\\\\) here, and'" in out
    assert "console error paperpack/other/index.html" in out and "undefinedFunction" in out
    assert "kept" not in out  # math delimiters inside code are left alone
    assert "doctest rendered as nested quotes paperpack/other/index.html" in out
    assert "paperpack: 2 pages, 1 formulas rendered as MathML" in out
