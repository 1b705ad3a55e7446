r"""Reading YAML recipes and ``--config`` files the way users write them.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``5e-1`` and ``1e300`` load as the
strings ``'5e-1'`` and ``'1e300'``, and a config check then says "got '1e300'". :func:`load_yaml` reads them
as numbers (the YAML 1.2 rule, as JSON and Python do), refuses duplicate keys instead of keeping the last
one, and reports every problem with the file and line.

Examples:
    >>> from paperpack.core.yaml_io import parse_yaml
    >>> parse_yaml("learning_rate: 5e-1\nscaling: 1e300\nsteps: 10\nname: run-1")
    {'learning_rate': 0.5, 'scaling': 1e+300, 'steps': 10, 'name': 'run-1'}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from paperpack.core.errors import ConfigError

__all__ = ["load_yaml", "parse_yaml"]

# YAML 1.2's float (core schema), which also covers YAML 1.1's: digits with an exponent and no dot count.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_INTEGER = re.compile(r"^[-+]?[0-9][0-9_]*$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats and duplicate keys refused."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


def _construct_float_or_int(loader: _Loader, node: yaml.ScalarNode) -> float | int:
    text = str(loader.construct_scalar(node))
    if _INTEGER.match(text):  # "1_000" and plain integers keep PyYAML's int
        return int(text.replace("_", ""))
    return loader.construct_yaml_float(node)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float_or_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _message(error: yaml.YAMLError, source: str) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return f"{where}: not valid YAML: {problem}"


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    r"""Parse YAML text safely (no Python objects), with numbers such as ``1e300`` read as numbers.

    Args:
        text: the YAML document.
        source: what to call the text in error messages (a file name).

    Returns:
        The document: dicts, lists, str, int, float, bool and None.

    Raises:
        ConfigError: naming ``source``, the line and the problem (bad syntax, a duplicate key).

    Examples:
        >>> from paperpack.core.yaml_io import parse_yaml
        >>> parse_yaml("a: 1\na: 2", source="run.yaml")
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: run.yaml:2:1: not valid YAML: duplicate key 'a' (first on line 1)
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(_message(error, source)) from None


def load_yaml(path: str | os.PathLike[str]) -> Any:
    r"""Read a YAML file with :func:`parse_yaml`.

    Raises:
        FileNotFoundError: when the file does not exist.
        ConfigError: for a folder, text that is not UTF-8, or YAML that does not parse (file and line named).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.yaml_io import load_yaml
        >>> path = Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = path.write_text("learning_rate: 1e-5\nmax_steps: 100\n")
        >>> load_yaml(path)
        {'learning_rate': 1e-05, 'max_steps': 100}
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"YAML file {str(path)!r} does not exist")
    if not file.is_file():
        raise ConfigError(f"{str(path)!r} is not a file; expected a YAML file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = file.read_bytes()[: error.start].count(b"\n") + 1
        raise ConfigError(f"{file}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x})") from None
    return parse_yaml(text, source=str(file))
