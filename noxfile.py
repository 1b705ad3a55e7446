"""The one entry point for paperpack's tests, lint, type checks, docs, builds and the demo.

Plain ``nox`` runs lint, typecheck, the CPU tests, docs and build for every package. Packages are discovered
from the workspace (``shared`` and ``packages/*``), so a new package needs no edit here.

Sessions run in the workspace's uv environment (``uv run --locked``), except ``build``, which installs each
wheel alone into a fresh environment, as a user would.

``nox -t gpu`` runs every package's gpu-marked tests (``nox -s "tests(package='tezo', device='gpu')"`` one's).
GPU machines without network: ``PAPERPACK_NOX_SYSTEM=1 nox -t gpu`` uses the current Python
(which already has torch, transformers, peft, accelerate), installs the workspace packages into it without
dependencies, takes any missing requirement from the wheel folder ``PAPERPACK_WHEELHOUSE``, and runs
``pytest -m gpu``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tomllib
from pathlib import Path

import nox
from packaging.requirements import Requirement

ROOT = Path(__file__).parent
SYSTEM = os.environ.get("PAPERPACK_NOX_SYSTEM") == "1"
WHEELHOUSE = os.environ.get("PAPERPACK_WHEELHOUSE")

nox.options.default_venv_backend = "none"
nox.options.tags = ["default"]
nox.options.error_on_external_run = False


def _members() -> dict[str, Path]:
    """Short package name -> folder: ``core`` for shared/, then ``packages/<name>``."""
    found = {"core": ROOT / "shared"}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        found[pyproject.parent.name] = pyproject.parent
    return found


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _module(folder: Path) -> str:
    """The import name of a member: paperpack.core, paperpack.sewa, paperpack.r_tsvm, ..."""
    (module,) = [
        p.name for p in (folder / "src" / "paperpack").iterdir() if p.is_dir() and not p.name.startswith("_")
    ]
    return f"paperpack.{module}"


MEMBERS = _members()
NAMES = list(MEMBERS)
ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _uv_run(session: nox.Session, *args: str) -> None:
    session.run("uv", "run", "--locked", "--all-packages", "--all-groups", *args, env=ENV, external=True)


def _system_install(session: nox.Session) -> None:
    """Install the workspace into the current Python, offline (GPU machines without network).

    Requirements the Python lacks or has at a version outside the workspace's range (and their own
    dependencies) come from the wheel folder ``PAPERPACK_WHEELHOUSE``, never from an index; what is installed
    already in range (torch, accelerate, ...) is kept. Then the workspace packages are installed in editable mode without dependencies.
    """
    wanted = ["pytest", "hatchling>=1.26", "editables"]  # hatchling needs editables for editable installs
    for folder in MEMBERS.values():
        wanted += _project(folder)["dependencies"]
    missing = [str(req) for req in _unmet(wanted)]
    pip = [sys.executable, "-m", "pip", "install", "--no-index"]
    if missing:
        if not WHEELHOUSE:
            session.error(
                f"missing or out of range: {', '.join(missing)}; put their wheels (with their dependencies) in a folder and set "
                "PAPERPACK_WHEELHOUSE to it"
            )
        session.run(*pip, "--find-links", WHEELHOUSE, *missing, external=True)
    editable = [arg for folder in MEMBERS.values() for arg in ("-e", str(folder))]
    session.run(*pip, "--no-deps", "--no-build-isolation", *editable, external=True)


def _unmet(requirements: list[str]) -> list[Requirement]:
    """The requirements this Python does not satisfy: absent, or installed at a version outside the range.

    Workspace members (``paperpack-*``) are skipped: they are installed from the checkout; so are requirements
    whose environment marker excludes this Python.
    """
    merged: dict[str, Requirement] = {}
    for text in requirements:
        req = Requirement(text)
        if req.name.startswith("paperpack-") or (req.marker is not None and not req.marker.evaluate()):
            continue
        if req.name in merged:
            merged[req.name].specifier &= req.specifier
        else:
            merged[req.name] = req
    unmet = []
    for req in merged.values():
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(req)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(req)
    return unmet


@nox.session(tags=["default"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the workspace."""
    _uv_run(session, "ruff", "check", ".")
    _uv_run(session, "ruff", "format", "--check", ".")


@nox.session(tags=["default"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every package's src."""
    sources = [str(folder / "src") for folder in MEMBERS.values()]
    session.env["MYPYPATH"] = os.pathsep.join(sources)
    _uv_run(session, "mypy", *[str(Path(src) / "paperpack") for src in sources])


@nox.session
@nox.parametrize(
    ("package", "device"),
    [nox.param(name, "cpu", tags=["default"], id=f"package='{name}', device='cpu'") for name in NAMES]
    + [nox.param(name, "gpu", tags=["gpu"], id=f"package='{name}', device='gpu'") for name in NAMES],
)
def tests(session: nox.Session, package: str, device: str) -> None:
    """pytest for one package: on the CPU (gpu tests deselected) or the gpu-marked tests on a CUDA device."""
    folder = MEMBERS[package]
    if device == "gpu":
        if SYSTEM:
            _system_install(session)
            python = [sys.executable]
        else:
            python = ["uv", "run", "--locked", "--all-packages", "--all-groups", "python"]
        probe = "import torch; print(torch.cuda.is_available())"
        if "True" not in str(session.run(*python, "-c", probe, silent=True, external=True)):
            session.skip("no CUDA device here: the gpu tests need one (torch.cuda.is_available() is False)")
        session.run(
            *python,
            "-m",
            "pytest",
            str(folder / "tests"),
            "-m",
            "gpu",
            *session.posargs,
            env=ENV,
            external=True,
            success_codes=[0, 5],  # 5: the package has no gpu-marked tests (ma-osma is numpy only)
        )
        return
    module = _module(folder)
    _uv_run(
        session, "pytest", str(folder / "tests"), "-m", "not gpu", "--durations=10",
        "--doctest-modules", "--pyargs", module, *session.posargs,
    )  # fmt: skip


@nox.session(tags=["default"])
def workspace(session: nox.Session) -> None:
    """Cross-package tests (tests/): layout conventions, every package found by the CLI."""
    _uv_run(session, "pytest", str(ROOT / "tests"), *session.posargs)


def _site_targets() -> dict[str, tuple[Path, str]]:
    targets = {"paperpack": (ROOT, "paperpack")}
    targets.update({name: (folder, _project(folder)["name"]) for name, folder in MEMBERS.items()})
    return targets


def _build_site(session: nox.Session, folder: Path, destination: Path) -> None:
    _uv_run(
        session, "mkdocs", "build", "--strict", "-q", "-f", str(folder / "mkdocs.yml"), "-d", str(destination)
    )


@nox.session(tags=["default"])
@nox.parametrize("package", list(_site_targets()))
def docs(session: nox.Session, package: str) -> None:
    """mkdocs build --strict of one package's site into site/<distribution>/ (paperpack: the umbrella)."""
    folder, distribution = _site_targets()[package]
    _build_site(session, folder, ROOT / "site" / distribution)


@nox.session
def docs_browser(session: nox.Session) -> None:
    """Build every site, then open every page in headless Chromium, offline: unrendered math, broken internal
    links and anchors, and console errors fail the session (not part of the default run).

    Needs the OS's Chromium and chromedriver: ``apt-get install -y chromium chromium-driver``.
    """
    root = ROOT / "site-browser"
    shutil.rmtree(root, ignore_errors=True)
    for folder, distribution in _site_targets().values():
        _build_site(session, folder, root / distribution)
    _uv_run(session, "python", str(ROOT / "tests" / "docs_browser.py"), str(root))


@nox.session(tags=["default"])
@nox.parametrize("package", NAMES)
def build(session: nox.Session, package: str) -> None:
    """uv build --no-sources one wheel, install it alone in a fresh environment, smoke-test it."""
    folder = MEMBERS[package]
    distribution = _project(folder)["name"]
    wheels = ROOT / "dist" / distribution
    shutil.rmtree(wheels, ignore_errors=True)
    session.run(
        "uv",
        "build",
        "--package",
        distribution,
        "--no-sources",
        "--wheel",
        "--out-dir",
        str(wheels),
        external=True,
    )
    core_wheels = ROOT / "dist" / "paperpack-core"
    if package != "core":
        shutil.rmtree(core_wheels, ignore_errors=True)
        session.run(
            "uv",
            "build",
            "--package",
            "paperpack-core",
            "--no-sources",
            "--wheel",
            "--out-dir",
            str(core_wheels),
            external=True,
        )
    (wheel,) = wheels.glob("*.whl")
    venv = ROOT / ".nox" / f"wheel-{distribution}"
    shutil.rmtree(venv, ignore_errors=True)
    session.run(
        "uv",
        "venv",
        "--quiet",
        "--python",
        f"{sys.version_info.major}.{sys.version_info.minor}",
        str(venv),
        external=True,
    )
    python = str(venv / "bin" / "python")
    # The wheels are rebuilt with an unchanged version: refresh them so uv's cache cannot serve an older build.
    refresh = ["--refresh-package", "paperpack-core", "--refresh-package", distribution]
    install = ["uv", "pip", "install", "--quiet", "--python", python, *refresh]
    session.run(*install, "--find-links", str(core_wheels), str(wheel), external=True)
    module = _module(folder)
    smoke = (
        f"import importlib.resources, paperpack, {module}; "
        "assert paperpack.__file__ is None, 'paperpack must stay a namespace package'; "
        f"assert importlib.resources.files('{module}').joinpath('py.typed').is_file(), 'py.typed is missing'"
    )
    session.run(python, "-c", smoke, env=ENV, external=True)
    command = [] if package == "core" else [package]
    session.run(str(venv / "bin" / "paperpack"), *command, "--help", env=ENV, external=True, silent=True)
    session.run(str(venv / "bin" / "paperpack"), "list", env=ENV, external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """paperpack demo --quick: every installed package's demo, on tiny built-in models and data."""
    _uv_run(
        session, "paperpack", "demo", "--quick", "--output", str(ROOT / "paperpack-demo"), *session.posargs
    )


@nox.session
@nox.parametrize("package", [nox.param(name, id=f"package='{name}'") for name in NAMES])
def lowest(session: nox.Session, package: str) -> None:
    """A package's cpu tests against the lowest versions its pyproject and the core's allow (torch 2.6, ...)."""
    venv = ROOT / ".nox" / f"lowest-{package}"
    shutil.rmtree(venv, ignore_errors=True)
    session.run(
        "uv",
        "venv",
        "--quiet",
        "--python",
        f"{sys.version_info.major}.{sys.version_info.minor}",
        str(venv),
        external=True,
    )
    python = str(venv / "bin" / "python")
    install = ["uv", "pip", "install", "--quiet", "--python", python, "--resolution", "lowest-direct"]
    editable = {str(MEMBERS["core"]), str(MEMBERS[package])}
    session.run(
        *install, *[arg for path in sorted(editable) for arg in ("-e", path)], "pytest>=8.3", external=True
    )
    session.run(
        python,
        "-c",
        "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)",
        external=True,
    )
    session.run(
        python,
        "-m",
        "pytest",
        str(MEMBERS[package] / "tests"),
        "-m",
        "not gpu",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env=ENV,
        external=True,
    )
