import json

import pytest

from paperpack.core.data import read_jsonl
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError, PaperpackError
from paperpack.core.registry import Registry
from paperpack.core.validation import check_choice, check_int, check_positive, check_probability, check_range


def test_error_hierarchy():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, PaperpackError)
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(
        CheckpointNotFoundError, CheckpointError
    )


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: check_positive("eta", 0), "`eta` must be > 0, got 0"),
        (lambda: check_positive("eta", -1, allow_zero=True), "`eta` must be >= 0, got -1"),
        (lambda: check_positive("eta", float("nan")), "`eta` must be a finite number, got nan"),
        (lambda: check_positive("eta", True), "`eta` must be a number, got True"),
        (lambda: check_int("k", 2.0), "`k` must be an integer, got 2.0"),
        (lambda: check_int("k", 0, minimum=1), "`k` must be >= 1, got 0"),
        (lambda: check_int("k", 9, maximum=5), "`k` must be <= 5, got 9"),
        (lambda: check_range("p", 1.0, 0, 1, high_inclusive=False), r"`p` must be in \[0, 1\), got 1.0"),
        (lambda: check_range("c", 0, 0, 1, low_inclusive=False), r"`c` must be in \(0, 1\], got 0"),
        (lambda: check_probability("p", 1.5), r"`p` must be in \[0, 1\], got 1.5"),
        (lambda: check_choice("m", "x", ["a", "b"]), "`m` must be one of 'a', 'b', got 'x'"),
    ],
)
def test_validation_messages(check, message):
    with pytest.raises(ConfigError, match=message):
        check()


def test_validation_accepts_good_values():
    check_positive("a", 1e-9)
    check_positive("a", 0, allow_zero=True)
    check_int("k", 3, minimum=1, maximum=3)
    check_range("p", 0.5, 0, 1)
    check_choice("m", "a", ("a",))


def test_registry():
    registry: Registry[int] = Registry("thing")
    registry.register("one", 1)

    @registry.register("two-2")
    def two():
        return 2

    assert registry.names() == ["one", "two-2"] and "one" in registry and len(registry) == 2
    assert registry.get("two-2") is two
    with pytest.raises(ConfigError, match="unknown thing 'three'; available: one, two-2"):
        registry.get("three")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("one", 3)
    for bad in ("One", "1x", "", "a b"):
        with pytest.raises(ConfigError, match="malformed"):
            registry.register(bad, 0)


def test_read_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "n": 1}) + "\n\n" + json.dumps({"text": "b"}) + "\n")
    assert [r["text"] for r in read_jsonl(path)] == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    for content, message in [
        ("{bad\n", "d.jsonl:1 is not valid JSON"),
        ("[1]\n", "d.jsonl:1 must be a JSON object"),
        ('{"text": "a"}\n{"prompt": "b"}\n', "d.jsonl:2 needs a string field 'text'"),
        ("\n", "holds no records"),
    ]:
        path.write_text(content)
        with pytest.raises(ConfigError, match=message):
            read_jsonl(path)


def test_atomic_path_writes_or_leaves_nothing(tmp_path):
    from paperpack.core.files import atomic_path, atomic_write_text

    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as path:
        path.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    with atomic_path(target) as path:
        path.write_text("new")
    assert target.read_text() == "new"


def test_lazy_exports_import_on_first_use(tmp_path, monkeypatch):
    import sys

    from paperpack.core.lazy import lazy_exports

    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "heavy.py").write_text("LOADED = True\ndef thing():\n    return 42\n")
    (package / "__init__.py").write_text(
        "from paperpack.core.lazy import lazy_exports\n"
        "__all__ = ['thing']\n"
        "__getattr__, __dir__ = lazy_exports(__name__, {'thing': 'lazypkg.heavy'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazypkg

    assert "lazypkg.heavy" not in sys.modules
    assert "thing" in dir(lazypkg)
    assert lazypkg.thing() == 42
    assert "lazypkg.heavy" in sys.modules
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        lazypkg.nope  # noqa: B018
    assert lazy_exports  # the helper itself is importable without torch


def test_lazy_exports_read_the_type_checking_table(tmp_path, monkeypatch):
    import sys

    from paperpack.core.lazy import type_checking_imports

    package = tmp_path / "tablepkg"
    package.mkdir()
    (package / "heavy.py").write_text("class Thing:\n    pass\ndef make():\n    return Thing()\n")
    (package / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from paperpack.core.lazy import lazy_exports\n"
        "if TYPE_CHECKING:\n"
        "    from tablepkg.heavy import Thing as Thing\n"
        "    from .heavy import make as build\n"
        "__getattr__, __dir__ = lazy_exports(__name__)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tablepkg

    assert tablepkg.__all__ == ["Thing", "build"]
    assert "tablepkg.heavy" not in sys.modules
    assert isinstance(tablepkg.build(), tablepkg.Thing)
    with pytest.raises(AttributeError, match="has no attribute 'make'"):
        tablepkg.make  # noqa: B018
    with pytest.raises(TypeError, match="only `from module import name`"):
        type_checking_imports("if TYPE_CHECKING:\n    import os\n", "p")
    with pytest.raises(TypeError, match="imported twice"):
        type_checking_imports("if TYPE_CHECKING:\n    from a import x\n    from b import x\n", "p")


def test_atomic_folder(tmp_path):
    from paperpack.core.files import atomic_folder
    from paperpack.core.testing.contracts import assert_no_partial_output

    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as folder:
        (folder / "half").write_text("x")
        raise KeyboardInterrupt
    assert_no_partial_output(target)
    with atomic_folder(target) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(FileExistsError, match="already exists"), atomic_folder(target):
        pass
    with atomic_folder(target, overwrite=True) as folder:
        (folder / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [".paperpack-output.json", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_config_arguments():
    import argparse
    from dataclasses import dataclass, field
    from typing import Literal

    from paperpack.core.arguments import add_config_arguments, config_overrides

    @dataclass
    class Config:
        rank: int = field(default=8, metadata={"help": "the rank r (100% ours)"})
        eps: float = 1e-3
        mode: Literal["a", "b"] = "a"
        keys: list[str] = field(default_factory=list)
        scale: bool = False
        note: str | None = None

    parser = argparse.ArgumentParser()
    names = add_config_arguments(parser, Config, exclude=["eps"])
    assert names == ["rank", "mode", "keys", "scale", "note"]
    args = parser.parse_args(["--rank", "4", "--mode", "b", "--keys", "x", "y", "--no-scale"])
    assert config_overrides(args, names) == {"rank": 4, "mode": "b", "keys": ["x", "y"], "scale": False}
    assert config_overrides(parser.parse_args([]), names) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    assert "100% ours" in parser.format_help()

    @dataclass
    class Bad:
        callback: object = None

    with pytest.raises(TypeError, match="cannot be a command-line flag"):
        add_config_arguments(argparse.ArgumentParser(), Bad)
