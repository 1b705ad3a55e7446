"""Subcommands whose flags are built only when the subcommand is used.

A training subcommand's flags come from its ``TrainingArguments`` class (:func:`~paperpack.core.commands.
add_training_arguments`), and importing that class imports torch and transformers. ``paperpack <package>
--help`` lists the subcommands but must not pay for that: with :func:`add_subcommand` the flags are added by
``configure(parser)`` the first time the subcommand parses its arguments or prints its help, so only the
chosen subcommand imports what its flags need.

Examples:
    >>> from paperpack.core.arguments import ArgumentParser
    >>> from paperpack.core.subcommands import add_subcommand
    >>> parser = ArgumentParser(prog="paperpack toy")
    >>> commands = parser.add_subparsers(dest="toy_command")
    >>> def train_flags(train):  # imports what the flags need, e.g. transformers, here
    ...     _ = train.add_argument("--max-steps", type=int, default=10)
    >>> train = add_subcommand(commands, "train", train_flags, help="train a model")
    >>> train.configured
    False
    >>> parser.parse_args(["train", "--max-steps", "3"]).max_steps, train.configured
    (3, True)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from paperpack.core.arguments import ArgumentParser

__all__ = ["DeferredParser", "add_subcommand"]


class DeferredParser(ArgumentParser):
    """A parser that calls ``configure(self)`` once, before its first parse or help.

    An :class:`~paperpack.core.arguments.ArgumentParser` otherwise.

    Args:
        configure: adds the parser's flags (and its ``set_defaults(handler=...)``); None for none.
    """

    def __init__(
        self, *args: Any, configure: Callable[[argparse.ArgumentParser], Any] | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._configure = configure

    @property
    def configured(self) -> bool:
        """Whether the flags have been added."""
        return self._configure is None

    def ensure_configured(self) -> None:
        """Add the deferred flags now (once)."""
        if self._configure is not None:
            configure, self._configure = self._configure, None
            configure(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Add the deferred flags, then parse."""
        self.ensure_configured()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        """Add the deferred flags, then format the usage line."""
        self.ensure_configured()
        return super().format_usage()

    def format_help(self) -> str:
        """Add the deferred flags, then format the help."""
        self.ensure_configured()
        return super().format_help()


def add_subcommand(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    configure: Callable[[argparse.ArgumentParser], Any],
    *,
    help: str,
    description: str | None = None,
) -> DeferredParser:
    """Add the subcommand ``name`` whose flags ``configure(parser)`` adds when it is first used.

    Args:
        subparsers: what ``parser.add_subparsers(...)`` returned.
        name: the subcommand.
        configure: adds the flags and ``set_defaults(handler=...)``; import heavy modules inside it.
        help: the one line listed in the parent's help.
        description: the subcommand's own help text (default: ``help``).

    Returns:
        The subcommand's parser (its flags are not there yet).
    """
    # argparse builds every subparser with the action's parser class; this one is deferred.
    parser_class = subparsers._parser_class
    subparsers._parser_class = DeferredParser
    try:
        parser = subparsers.add_parser(name, help=help, description=description or help, configure=configure)
    finally:
        subparsers._parser_class = parser_class
    return parser  # type: ignore[no-any-return]
