"""Cross-package checks: every member follows the layout, declares its entry points, and the CLI finds it."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MEMBERS = [ROOT / "shared", *sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))]
CORE_VERSION = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"]["version"]


def project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def module_name(folder: Path) -> str:
    (module,) = [
        p.name for p in (folder / "src" / "paperpack").iterdir() if p.is_dir() and p.name != "__pycache__"
    ]
    return f"paperpack.{module}"


@pytest.mark.parametrize("folder", MEMBERS, ids=lambda p: p.name)
def test_layout(folder):
    for required in ("README.md", "CHANGELOG.md", "mkdocs.yml", "docs/index.md", "tests", "pyproject.toml"):
        assert (folder / required).exists(), f"{folder.name} lacks {required}"
    if folder.name != "shared":
        assert (folder / "benchmarks").is_dir(), f"{folder.name} lacks benchmarks/"
    assert not (folder / "src" / "paperpack" / "__init__.py").exists(), "paperpack is a namespace package"
    package = ROOT / folder / "src" / Path(*module_name(folder).split("."))
    assert (package / "py.typed").is_file()
    assert (package / "__init__.py").is_file()


@pytest.mark.parametrize("folder", MEMBERS, ids=lambda p: p.name)
def test_pyproject(folder):
    meta = project(folder)
    assert meta["name"] == ("paperpack-core" if folder.name == "shared" else f"paperpack-{folder.name}")
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), "a static version"
    assert meta["requires-python"] == ">=3.11"
    if folder.name != "shared":
        major, minor, _ = CORE_VERSION.split(".")
        assert f"paperpack-core>={major}.{minor},<{major}.{int(minor) + 1}" in meta["dependencies"]
        commands = meta["entry-points"]["paperpack.commands"]
        demos = meta["entry-points"]["paperpack.demos"]
        assert folder.name in commands and folder.name in demos


@pytest.mark.parametrize("folder", MEMBERS, ids=lambda p: p.name)
def test_public_api_is_declared(folder):
    module = importlib.import_module(module_name(folder))
    for name in module.__all__:
        assert hasattr(module, name), f"{module.__name__}.__all__ names {name!r}, which does not exist"
    for group in ("paperpack.commands", "paperpack.demos"):
        for target in project(folder).get("entry-points", {}).get(group, {}).values():
            path, attribute = target.split(":")
            function = getattr(importlib.import_module(path), attribute)
            assert len(inspect.signature(function).parameters) == 1, f"{target} takes one argument"


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "paperpack.core.cli", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_lists_every_package():
    listing = run("list")
    for folder in MEMBERS:
        assert project(folder)["name"] in listing


HELP_PROBE = """
import sys
from paperpack.core.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
print("heavy imports:", sorted(m for m in ("torch", "transformers", "trl") if m in sys.modules))
"""


@pytest.mark.parametrize("folder", MEMBERS[1:], ids=lambda p: p.name)
def test_every_command_has_fast_help(folder):
    """`paperpack <command> --help` works and imports no torch, transformers or TRL (it stays instant)."""
    for command in project(folder)["entry-points"]["paperpack.commands"]:
        result = subprocess.run(
            [sys.executable, "-c", HELP_PROBE, command], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "usage: paperpack" in result.stdout
        assert "heavy imports: []" in result.stdout, f"`paperpack {command} --help` imports heavy modules"
