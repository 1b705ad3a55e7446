"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_quick_start_runs():
    readme = Path(__file__).parents[1] / "README.md"
    (code,) = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    exec(compile(code, str(readme), "exec"), {})
