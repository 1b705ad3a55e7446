"""Config dataclasses as command-line flags, for the ``paperpack <name>`` subcommands.

``transformers.HfArgumentParser`` builds a parser of its own and cannot add to a subparser the core created,
so subcommands use :func:`add_config_arguments`: one ``--flag`` per field, whose help is the field's
``metadata["help"]``. Flags default to None, so that only what the user typed overrides the config's own
defaults (see :func:`config_overrides`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["add_config_arguments", "config_overrides"]


def _flag_kwargs(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        (hint,) = [argument for argument in arguments if argument is not type(None)]
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(arguments), "type": type(arguments[0])}
    if origin in (list, tuple):
        item = arguments[0] if arguments else str
        return {"nargs": "*", "type": item, "metavar": item.__name__.upper()}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"cannot turn a field of type {hint!r} into a command-line flag")


def add_config_arguments(
    parser: argparse.ArgumentParser, config_class: type[Any], *, exclude: Iterable[str] = ()
) -> list[str]:
    """Add one ``--field-name`` flag per init field of the dataclass ``config_class``.

    Supported field types: bool (``--flag`` / ``--no-flag``), int, float, str, ``Literal[...]`` (choices),
    lists and tuples (several values), and any of these ``| None``.

    Args:
        parser: the (sub)parser to extend.
        config_class: a dataclass whose fields carry ``metadata={"help": ...}``.
        exclude: field names to leave out (set them in code instead).

    Returns:
        The field names that got a flag, for :func:`config_overrides`.

    Example:
        >>> import argparse
        >>> from dataclasses import dataclass, field
        >>> from paperpack.core.arguments import add_config_arguments, config_overrides
        >>> @dataclass
        ... class Config:
        ...     rank: int = field(default=8, metadata={"help": "r"})
        ...     scale: bool = field(default=False, metadata={"help": "scale by rank"})
        >>> parser = argparse.ArgumentParser()
        >>> names = add_config_arguments(parser, Config)
        >>> config_overrides(parser.parse_args(["--rank", "4"]), names)
        {'rank': 4}
    """
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"`config_class` must be a dataclass, got {config_class!r}")
    hints = typing.get_type_hints(config_class)
    skipped = set(exclude)
    names = []
    for item in dataclasses.fields(config_class):
        if not item.init or item.name in skipped:
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = str(item.metadata.get("help", "")).replace("%", "%%")
        parser.add_argument(
            flag, dest=item.name, default=None, help=help_text, **_flag_kwargs(hints[item.name])
        )
        names.append(item.name)
    return names


def config_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags among ``names`` that were given on the command line, as config keyword arguments."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
