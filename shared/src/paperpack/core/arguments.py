"""Command-line flags generated from config dataclasses, read the same way by every ``paperpack`` command.

:func:`add_config_arguments` turns each field of a dataclass into a flag:

- both spellings are accepted: ``--learning-rate`` (shown in the help) and ``--learning_rate`` (the field's
  own name, as transformers' and TRL's command lines spell it);
- the help is the field's ``metadata["help"]`` followed by its default, read from the dataclass: a default
  lives in one place;
- ``Literal[...]`` fields take one of their values (the only way to spell choices), ``bool`` fields are
  ``--x`` / ``--no-x``, lists take several values, ``dict`` fields a JSON object;
- flags default to None, so :func:`config_overrides` returns only what the user gave and the config's own
  defaults apply otherwise;
- a value is converted and checked where it is read, and a bad one is reported with the flag as the user typed
  it: ``` `--max-steps` must be an integer, got '1e3' ```.

:func:`add_config_file_argument` adds ``--config FILE.yaml``, read as TRL's command line reads it: a mapping
of field names (``learning_rate: 5e-1``; the flag's spelling without dashes works too) whose values replace
the defaults, flags typed on the command line win, an ``env:`` mapping sets environment variables, and an
unknown key is an error. Numbers such as ``1e-5`` and ``1e300`` are read as numbers
(:mod:`paperpack.core.yaml_io`).

Errors raised later, while a command builds its configs, name fields in backquotes (```` `zo_rank` must be
> 0 ````); :func:`describe_arguments` rewrites them to name the flag as typed (```` `--rank` ````) or the
config file's key, and the ``paperpack`` command does so for every error it prints.

:class:`ArgumentParser` is the parser ``paperpack`` builds its commands with: no abbreviated flags (``--lr``
must not silently mean ``--lr-scheduler-type``), one-line errors that suggest the flag meant, and a command
with subcommands but none given prints its help and exits with status 2.

This module imports no torch or transformers, so building flags costs nothing until a config class is loaded.
"""

import argparse
import dataclasses
import difflib
import enum
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from paperpack.core.errors import ConfigError

__all__ = [
    "ArgumentParser",
    "add_config_arguments",
    "add_config_file_argument",
    "add_flag",
    "config_overrides",
    "describe_arguments",
    "flag_name",
    "supported_fields",
]

#: The namespace attribute that maps each destination to how the user gave it (a flag or a config file key).
_SOURCES = "_paperpack_sources"
#: The namespace attribute holding the destinations typed on the command line (they win over ``--config``).
_TYPED = "_paperpack_typed"
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class _InvalidValueError(Exception):
    """A value that cannot be converted; the message says what is allowed, the caller names the flag."""


# ---- converters: text (command line) or YAML value (config file) -> value ----------------------------------


Converter = Callable[[Any], Any]


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _InvalidValueError(f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _InvalidValueError(f"must be an integer, got {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _InvalidValueError(f"must be a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _InvalidValueError(f"must be a number, got {value!r}") from None
    else:
        raise _InvalidValueError(f"must be a number, got {value!r}")
    if not math.isfinite(number):
        raise _InvalidValueError(f"must be a finite number, got {value!r}")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _InvalidValueError(f"must be a string, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise _InvalidValueError(f"must be true or false, got {value!r}")


def _to_json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise _InvalidValueError(f"must be a JSON object, got {value!r} ({error.msg})") from None
        if isinstance(parsed, dict):
            return parsed
    raise _InvalidValueError(f"must be a JSON object such as '{{\"key\": 1}}', got {value!r}")


def _json_object_or_str(value: Any) -> dict[str, Any] | str:
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        return value
    return _to_json_object(value)


def _bool_or_str(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    text = _to_str(value)
    return text.lower() in _TRUE if text.lower() in _TRUE | _FALSE else text


def _int_or_str(value: Any) -> int | str:
    try:
        return _to_int(value)
    except _InvalidValueError:
        return _to_str(value)


def _member_of(choices: Sequence[Any], convert: Converter) -> Converter:
    def check(value: Any) -> Any:
        converted = convert(value)
        for choice in choices:
            if converted == choice and type(converted) is type(choice):
                return choice
        listed = ", ".join(repr(choice) for choice in choices)
        raise _InvalidValueError(f"must be one of {listed}, got {value!r}")

    return check


_SCALARS: dict[Any, tuple[Converter, str]] = {
    int: (_to_int, "INT"),
    float: (_to_float, "FLOAT"),
    str: (_to_str, "TEXT"),
}


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one field is read: a converter per value, how many values, and how the help shows it."""

    convert: Converter
    metavar: str | None
    nargs: int | str | None = None  # None: one value; "+": a list; 0: a bool switch
    choices: tuple[Any, ...] = ()


def _strip_none(hint: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        return (members[0] if len(members) == 1 else hint), members
    return hint, [hint]


def _literal_kind(values: tuple[Any, ...]) -> _Kind:
    kinds = {type(value) for value in values}
    base = _SCALARS[kinds.pop()][0] if len(kinds) == 1 and next(iter(kinds), None) in _SCALARS else _to_str
    if all(isinstance(value, bool) for value in values):
        base = _to_bool
    metavar = "{" + ",".join(str(value) for value in values) + "}"
    return _Kind(_member_of(values, base), metavar, choices=values)


def _sequence_kind(hint: Any) -> _Kind | None:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin not in (list, tuple, Sequence) and hint not in (list, tuple):
        return None
    if origin is tuple and arguments and arguments[-1] is not Ellipsis:
        items = {_scalar_kind(argument) for argument in arguments}
        if len(items) != 1 or None in items:
            return None
        item = items.pop()
        assert item is not None
        return _Kind(item.convert, item.metavar, nargs=len(arguments), choices=item.choices)
    item = _scalar_kind(arguments[0]) if arguments else _Kind(_to_str, "TEXT")
    if item is None:
        return None
    return _Kind(item.convert, item.metavar, nargs="+", choices=item.choices)


def _scalar_kind(hint: Any) -> _Kind | None:
    if hint in _SCALARS:
        convert, metavar = _SCALARS[hint]
        return _Kind(convert, metavar)
    if typing.get_origin(hint) is typing.Literal:
        return _literal_kind(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _literal_kind(tuple(member.value for member in hint))
    return None


def _is_dict(hint: Any) -> bool:
    return hint is dict or typing.get_origin(hint) is dict


def _kind(hint: Any) -> _Kind | None:
    """How a field of type ``hint`` is read from the command line, or None when it cannot be."""
    hint, members = _strip_none(hint)
    if hint is bool:
        return _Kind(_to_bool, None, nargs=0)
    if len(members) > 1:
        return _union_kind(members)
    if _is_dict(hint):
        return _Kind(_to_json_object, "JSON")
    return _scalar_kind(hint) or _sequence_kind(hint)


def _union_kind(members: list[Any]) -> _Kind | None:
    """Unions as TrainingArguments writes them: the most specific reading that keeps each form."""
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    plain = [m for m in members if m not in literals]
    enums = [m for m in plain if isinstance(m, type) and issubclass(m, enum.Enum)]
    kind: _Kind | None = None
    if any(_sequence_kind(m) for m in plain):
        kind = _Kind(_to_str, "TEXT", nargs="+")
    elif any(_is_dict(m) for m in plain):
        kind = _Kind(_json_object_or_str if str in plain else _to_json_object, "JSON")
    elif enums and set(plain) <= {*enums, str}:
        kind = _literal_kind(tuple(member.value for e in enums for member in e))
    elif str in plain and (bool in plain or any(False in typing.get_args(m) for m in literals)):
        kind = _Kind(_bool_or_str, "TEXT")
    elif set(plain) == {int, str}:
        kind = _Kind(_int_or_str, "TEXT")
    elif set(plain) == {int, float}:
        kind = _Kind(_to_float, "FLOAT")
    return kind


# ---- actions ---------------------------------------------------------------------------------------------


def _record(namespace: argparse.Namespace, dest: str, source: str, *, typed: bool) -> None:
    """Remember how ``dest`` was given; copies on write, as argparse shares default values between parses."""
    sources = dict(getattr(namespace, _SOURCES, None) or {})
    sources[dest] = source
    setattr(namespace, _SOURCES, sources)
    if typed:
        setattr(namespace, _TYPED, {*(getattr(namespace, _TYPED, None) or ()), dest})


class _Flag(argparse.Action):
    """Stores a converted value and records the option string the user typed (for error messages)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, kind: _Kind, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=kind.nargs, metavar=kind.metavar, **kwargs)
        self.kind = kind

    def read(self, value: Any, source: str) -> Any:
        """Convert a value given as ``source`` (a flag or a config file key), or raise ConfigError."""
        try:
            if self.kind.nargs == 0:
                return _to_bool(value)
            if self.kind.nargs is None:
                return self.kind.convert(value)
            items = value if isinstance(value, list | tuple) else [value]
            if isinstance(self.kind.nargs, int) and len(items) != self.kind.nargs:
                raise _InvalidValueError(f"takes {self.kind.nargs} values, got {len(items)}")
            converted = [self.kind.convert(item) for item in items]
            return tuple(converted) if isinstance(self.kind.nargs, int) else converted
        except _InvalidValueError as error:
            raise ConfigError(f"{source} {error}") from None

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        typed = option_string or self.dest
        if self.kind.nargs == 0:
            value: Any = not typed.startswith(("--no-", "--no_"))
        else:
            try:
                value = self.read(values if self.kind.nargs is None else list(values or []), f"`{typed}`")
            except ConfigError as error:
                raise argparse.ArgumentError(None, str(error)) from None
        setattr(namespace, self.dest, value)
        _record(namespace, self.dest, f"`{typed}`", typed=True)

    def format_usage(self) -> str:
        return self.option_strings[0]


def _checked(convert: Callable[[Any], Any]) -> Converter:
    def read(value: Any) -> Any:
        try:
            return convert(value)
        except (TypeError, ValueError) as error:
            raise _InvalidValueError(str(error)) from None

    return read


def _spellings(name: str) -> list[str]:
    dashed = name.replace("_", "-")
    return [f"--{dashed}"] + ([f"--{name}"] if dashed != name else [])


def _format_default(default: Any) -> str:
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, str):
        return repr(default) if default == "" or default.strip() != default else default
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    hint: Any,
    *,
    help: str,
    default: Any = None,
    required: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    show_default: Any = dataclasses.MISSING,
    convert: Callable[[Any], Any] | None = None,
) -> argparse.Action:
    """Add one flag that reads values of type ``hint``, in both spellings; errors name the flag as typed.

    :func:`add_config_arguments` calls this per field; commands call it for a flag that is not a config field.
    The underscore spelling (``--max_length``) is accepted but not shown in the help.

    Args:
        parser: the parser or argument group.
        name: the destination (``args.<name>``), e.g. ``"max_length"``.
        hint: the value's type: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``, an Enum,
            ``list[...]``, ``tuple[...]``, ``dict``, or a union of these with None.
        help: what the flag does.
        default: the value when the flag is not given.
        required: the flag must be given (on the command line or in ``--config``).
        flag: the flag's name without dashes when it differs from ``name`` (``"rank"`` for ``zo_rank``).
        metavar: how the help shows the value, e.g. ``"DIR"``.
        show_default: the default the help shows, when not ``default`` (None: show none).
        convert: reads one value instead of ``hint``'s own reading (``hint`` still decides bool or list);
            raise ``ValueError("must be ..., got ...")`` and the error names the flag as typed.

    Returns:
        The visible action.

    Raises:
        TypeError: when ``hint`` cannot be read from a command line.

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser, add_flag
        >>> parser = ArgumentParser(prog="demo")
        >>> _ = add_flag(parser, "max_length", int, default=256, help="tokens per text")
        >>> parser.parse_args(["--max_length", "64"]).max_length, parser.parse_args([]).max_length
        (64, 256)
    """
    kind = _kind(hint)
    if kind is None:
        raise TypeError(f"`{name}`: a field of type {hint!r} cannot be a command-line flag; exclude it")
    if convert is not None:
        kind = dataclasses.replace(kind, convert=_checked(convert))
    if metavar is not None:
        kind = dataclasses.replace(kind, metavar=metavar)
    shown = default if show_default is dataclasses.MISSING else show_default
    text = help.replace("%", "%%").strip()
    if shown is not None and not required:
        text = f"{text} (default: {_format_default(shown)})".strip()
    elif required:
        text = f"{text} (required)".strip()
    spellings = _spellings(flag or name)
    if kind.nargs == 0:
        spellings_no = [f"--no-{s[2:]}" for s in spellings]
        visible = [spellings[0], spellings_no[0]]
        hidden = spellings[1:] + spellings_no[1:]
    else:
        visible, hidden = spellings[:1], spellings[1:]
    action = parser.add_argument(
        *visible, action=_Flag, dest=name, kind=kind, default=default, required=required, help=text
    )
    if hidden:
        parser.add_argument(
            *hidden, action=_Flag, dest=name, kind=kind, default=default, help=argparse.SUPPRESS
        )
    # How errors name this field until the user types it (an argument group shares its parser's defaults).
    sources = dict(parser._defaults.get(_SOURCES) or {})
    sources[name] = f"`{visible[0]}`"
    parser._defaults[_SOURCES] = sources
    return action


def supported_fields(config_class: type[Any]) -> list[str]:
    """The init fields of the dataclass ``config_class`` whose types can be read from a command line.

    Examples:
        >>> from dataclasses import dataclass
        >>> from paperpack.core.arguments import supported_fields
        >>> @dataclass
        ... class Config:
        ...     rank: int = 8
        ...     callback: object = None
        >>> supported_fields(Config)
        ['rank']
    """
    hints = typing.get_type_hints(config_class)
    return [
        item.name
        for item in dataclasses.fields(config_class)
        if item.init and _kind(hints[item.name]) is not None
    ]


def _field_default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_class: type[Any],
    *,
    exclude: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    title: str | None = None,
    show_defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Add one flag per init field of the dataclass ``config_class``; see the module docstring for the rules.

    Args:
        parser: the (sub)parser to extend.
        config_class: a dataclass whose fields carry ``metadata={"help": ...}``.
        exclude: field names to leave out (set them in code instead).
        rename: field name -> flag name without dashes, where the field's name would read badly on a command
            line (``{"zo_rank": "rank"}`` gives ``--rank``); errors then name ``--rank``.
        title: put the flags in an argument group with this title in the help.
        show_defaults: field name -> the default this command really uses, where it differs from the
            dataclass's (machine-dependent TrainingArguments fields); shown in the help only.

    Returns:
        The field names that got a flag, for :func:`config_overrides`.

    Raises:
        TypeError: for a class that is not a dataclass, an unknown name in ``exclude`` or ``rename``, or a
            field whose type cannot be a flag (exclude it).

    Examples:
        >>> from dataclasses import dataclass, field
        >>> from typing import Literal
        >>> from paperpack.core.arguments import ArgumentParser, add_config_arguments, config_overrides
        >>> @dataclass
        ... class Config:
        ...     zo_rank: int = field(default=8, metadata={"help": "r"})
        ...     estimate: Literal["one_sided", "two_sided"] = field(default="two_sided")
        ...     scale_by_rank: bool = field(default=False, metadata={"help": "τ ~ N(0, I/r)"})
        >>> parser = ArgumentParser(prog="demo")
        >>> names = add_config_arguments(parser, Config, rename={"zo_rank": "rank"})
        >>> config_overrides(parser.parse_args(["--rank", "4", "--scale_by_rank"]), names)
        {'zo_rank': 4, 'scale_by_rank': True}
    """
    if not dataclasses.is_dataclass(config_class) or not isinstance(config_class, type):
        raise TypeError(f"`config_class` must be a dataclass, got {config_class!r}")
    fields = {item.name: item for item in dataclasses.fields(config_class) if item.init}
    skipped, renamed = set(exclude), dict(rename or {})
    shown = dict(show_defaults or {})
    unknown = sorted((skipped | set(renamed) | set(shown)) - set(fields))
    if unknown:
        raise TypeError(f"{config_class.__name__} has no init field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(config_class)
    target: argparse.ArgumentParser | argparse._ArgumentGroup = (
        parser.add_argument_group(title) if title else parser
    )
    names = []
    for name, item in fields.items():
        if name in skipped:
            continue
        default = _field_default(item)
        add_flag(
            target,
            name,
            hints[name],
            help=str(item.metadata.get("help", "")),
            required=default is dataclasses.MISSING,
            flag=renamed.get(name),
            show_default=shown.get(name, None if default is dataclasses.MISSING else default),
        )
        names.append(name)
    return names


def config_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags among ``names`` that were given (command line or ``--config``), as keyword arguments.

    Examples:
        >>> import argparse
        >>> from paperpack.core.arguments import config_overrides
        >>> config_overrides(argparse.Namespace(rank=4, seed=None), ["rank", "seed"])
        {'rank': 4}
    """
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


# ---- --config FILE.yaml ------------------------------------------------------------------------------


def _config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help", "config", None) or isinstance(action, _ConfigFile):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        keys.setdefault(action.dest, action)
        for option in action.option_strings:
            if option.startswith("--") and not option.startswith(("--no-", "--no_")):
                keys.setdefault(option[2:].replace("-", "_"), action)
    return keys


def _read_plain(action: argparse.Action, value: Any, source: str) -> Any:
    """A config value for a flag a package added with plain argparse."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{source} must be true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") and not isinstance(value, list):
        value = [value]
    convert = action.type if callable(action.type) else None
    items = value if isinstance(value, list) else [value]
    converted = []
    for item in items:
        read = item
        if convert is not None and isinstance(item, str):
            try:
                read = convert(item)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{source} is not valid: {error}") from None
        if action.choices is not None and read not in action.choices:
            listed = ", ".join(repr(choice) for choice in action.choices)
            raise ConfigError(f"{source} must be one of {listed}, got {item!r}")
        converted.append(read)
    return converted if isinstance(value, list) else converted[0]


def _apply_config_file(parser: argparse.ArgumentParser, namespace: argparse.Namespace, path: str) -> None:
    from paperpack.core.yaml_io import load_yaml

    content = load_yaml(path)
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: must hold a mapping of field names to values, got {type(content).__name__}"
        )
    environment = content.pop("env", {}) or {}
    if not isinstance(environment, dict) or not all(isinstance(k, str) for k in environment):
        raise ConfigError(f"{path}: `env` must be a mapping of environment variable names to values")
    keys = _config_keys(parser)
    unknown = [key for key in content if not isinstance(key, str) or key not in keys]
    if unknown:
        hints = [
            f"{key!r} (did you mean {match[0]!r}?)"
            if (match := difflib.get_close_matches(str(key), keys, 1))
            else repr(key)
            for key in unknown
        ]
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(hints)}; `{parser.prog} --help` lists the flags (a key is a "
            "flag's name with underscores)"
        )
    typed = getattr(namespace, _TYPED, None) or set()
    values: dict[str, tuple[argparse.Action, Any, str]] = {}
    for key, value in content.items():
        action = keys[key]
        source = f"`{key}` in {path}"
        if action.dest in values:
            raise ConfigError(f"{path}: `{key}` and `{values[action.dest][2]}` set the same flag; keep one")
        read = action.read(value, source) if isinstance(action, _Flag) else _read_plain(action, value, source)
        values[action.dest] = (action, read, key)
    for name, value in environment.items():
        os.environ[name] = str(value)
    for dest, (action, value, key) in values.items():
        # A flag typed before --config keeps its value: the command line wins, wherever it stands.
        given = (
            dest in typed
            if isinstance(action, _Flag)
            else getattr(namespace, dest, None) is not action.default
        )
        if given:
            continue
        setattr(namespace, dest, value)
        action.required = False  # argparse checks required flags once every argument is read
        _record(namespace, dest, f"`{key}` in {path}", typed=False)


class _ConfigFile(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        path = str(values)
        try:
            _apply_config_file(parser, namespace, path)
        except (ConfigError, FileNotFoundError) as error:
            raise argparse.ArgumentError(None, str(error)) from None
        setattr(namespace, self.dest, path)


def add_config_file_argument(parser: argparse.ArgumentParser) -> None:
    r"""Add ``--config FILE.yaml``: defaults for the other flags of ``parser``, read as TRL's CLI does.

    Keys are destinations (``learning_rate``) or flag names with underscores; values are checked like the
    flag's; ``env:`` sets environment variables; flags typed on the command line win over the file.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.arguments import ArgumentParser, add_config_file_argument, add_flag
        >>> parser = ArgumentParser(prog="train")
        >>> _ = add_flag(parser, "learning_rate", float, help="η")
        >>> _ = add_flag(parser, "max_steps", int, help="steps")
        >>> add_config_file_argument(parser)
        >>> recipe = Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = recipe.write_text("learning_rate: 5e-1\nmax_steps: 10\n")
        >>> args = parser.parse_args(["--config", str(recipe), "--max-steps", "20"])
        >>> args.learning_rate, args.max_steps
        (0.5, 20)
    """
    parser.add_argument(
        "--config",
        action=_ConfigFile,
        metavar="FILE.yaml",
        default=None,
        help="read flag values from a YAML mapping (`learning_rate: 1e-5`; `env:` sets environment "
        "variables); flags typed on the command line win",
    )


# ---- naming what the user typed -----------------------------------------------------------------------


def flag_name(args: argparse.Namespace, name: str) -> str:
    """How the user gave the field ``name``: ``` `--rank` ```, ``` `learning_rate` in run.yaml ```, the flag.

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser, add_flag, flag_name
        >>> parser = ArgumentParser(prog="demo")
        >>> _ = add_flag(parser, "zo_rank", int, help="r", flag="rank")
        >>> flag_name(parser.parse_args(["--rank", "0"]), "zo_rank")
        '`--rank`'
    """
    sources: Mapping[str, str] = getattr(args, _SOURCES, None) or {}
    return sources.get(name, f"`--{name.replace('_', '-')}`")


def describe_arguments(args: argparse.Namespace | None, message: str) -> str:
    """Rewrite the backquoted field names of an error message as the flags or config keys the user gave.

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser, add_flag, describe_arguments
        >>> parser = ArgumentParser(prog="demo")
        >>> _ = add_flag(parser, "zo_rank", int, help="r", flag="rank")
        >>> args = parser.parse_args(["--rank", "0"])
        >>> describe_arguments(args, "`zo_rank` must be > 0, got 0")
        '`--rank` must be > 0, got 0'
    """
    sources: Mapping[str, str] = getattr(args, _SOURCES, None) or {}
    if not sources:
        return message
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: sources.get(m.group(1), m.group(0)), message)


# ---- the parser ----------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every ``paperpack`` command.

    Differences from ``argparse.ArgumentParser``: abbreviations are off (``--lr`` is an error, not
    ``--lr-scheduler-type``); an error is one line, ``<command>: error: <message>``, suggesting the flag meant
    for an unknown one; a parser with subcommands, called without one, prints its help and exits with
    status 2; the usage line of a command with many flags is short (``--help`` lists them).

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser
        >>> parser = ArgumentParser(prog="paperpack demo")
        >>> _ = parser.add_argument("--learning-rate", type=float)
        >>> parser.parse_args(["--learning-rat", "1"])  # doctest: +SKIP
        paperpack demo: error: unrecognized arguments: --learning-rat 1 (did you mean --learning-rate?)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        """Add subcommands; choosing none prints this parser's help and exits 2 (``required`` is implied)."""
        kwargs["required"] = False
        kwargs.setdefault("dest", f"_paperpack_subcommand_{id(self)}")
        kwargs.setdefault("metavar", "COMMAND")
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, then refuse a missing subcommand by printing the help (status 2)."""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None) is None:
                self.print_help(sys.stderr)
                self.exit(2)
        return parsed, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parse every argument; an unknown flag is an error that names the closest known one."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            known = [o for action in self._all_actions() for o in action.option_strings]
            guesses = [
                match[0]
                for extra in extras
                if extra.startswith("-")
                and (match := difflib.get_close_matches(extra.split("=")[0], known, 1))
            ]
            if guesses:
                message += f" (did you mean {', '.join(dict.fromkeys(guesses))}?)"
            self.error(message)
        return parsed

    def _all_actions(self) -> list[argparse.Action]:
        found = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += sub._all_actions() if isinstance(sub, ArgumentParser) else list(sub._actions)
        return found

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_usage(self) -> str:
        """The usage line, short for a command with many flags."""
        self._shorten_usage()
        return super().format_usage()

    def format_help(self) -> str:
        """The help, with a short usage line for a command with many flags."""
        self._shorten_usage()
        return super().format_help()

    def print_help(self, file: Any = None) -> None:
        """Print the help (to stdout by default)."""
        self._shorten_usage()
        super().print_help(file)

    def _shorten_usage(self) -> None:
        optionals = [a for a in self._actions if a.option_strings and a.help != argparse.SUPPRESS]
        if self.usage is not None or len(optionals) <= 12:
            return
        required = [f"{a.option_strings[0]} {a.metavar or a.dest.upper()}" for a in optionals if a.required]
        positionals = [
            a.metavar if isinstance(a.metavar, str) else a.dest
            for a in self._actions
            if not a.option_strings and a.help != argparse.SUPPRESS
        ]
        self.usage = " ".join(["%(prog)s", *required, "[options]", *map(str, positionals)])
