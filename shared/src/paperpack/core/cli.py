"""The ``paperpack`` command.

Packages join through entry points: a subcommand in the group ``paperpack.commands`` (a function
``configure_parser(parser)`` that adds arguments and ``parser.set_defaults(handler=fn)``), and a demo in
``paperpack.demos`` (``run_demo(ctx) -> DemoReport``). Only the chosen subcommand's module is imported, so
``paperpack --help`` stays fast.

Every parser is a :class:`paperpack.core.arguments.ArgumentParser`: a command with subcommands run without one
prints its help and exits with status 2, and an error is one line naming the flag as the user typed it (the
backquoted field names of a handler's error are rewritten by
:func:`~paperpack.core.arguments.describe_arguments`).
See ``docs/cli.md`` for the whole convention.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, distributions, entry_points, version
from pathlib import Path
from typing import Any

from paperpack.core.arguments import ArgumentParser, describe_arguments
from paperpack.core.commands import add_shared_arguments
from paperpack.core.errors import ConfigError, PaperpackError
from paperpack.core.registry import NAME_PATTERN

__all__ = ["COMMANDS_GROUP", "DEMOS_GROUP", "discover", "main"]

COMMANDS_GROUP = "paperpack.commands"
DEMOS_GROUP = "paperpack.demos"
#: The command name recorded in the output marker of ``paperpack demo`` results.
DEMO_COMMAND = "paperpack demo"
_BUILTIN = ("list", "demo")

logger = logging.getLogger(__name__)


def _distribution(entry: EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else "an unknown distribution"


def discover(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, validated.

    Raises:
        ConfigError: for a malformed name, a name taken by a built-in command, or a name two installed
            distributions both register.
    """
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        if not NAME_PATTERN.match(entry.name):
            raise ConfigError(
                f"{_distribution(entry)} registers {group} entry {entry.name!r}: names use lowercase "
                "letters, digits, '-' and '_'"
            )
        if group == COMMANDS_GROUP and entry.name in _BUILTIN:
            raise ConfigError(f"{_distribution(entry)} registers command {entry.name!r}, a built-in command")
        if entry.name in found and found[entry.name].value != entry.value:
            raise ConfigError(
                f"{group} entry {entry.name!r} is registered by both {_distribution(found[entry.name])} and "
                f"{_distribution(entry)}; uninstall one"
            )
        found[entry.name] = entry
    return dict(sorted(found.items()))


def _summary(entry: EntryPoint) -> str:
    if entry.dist is None:
        return ""
    return str((entry.dist.metadata.get_all("Summary") or [""])[0])


def _list(args: argparse.Namespace) -> int:
    commands = discover(COMMANDS_GROUP)
    demos = discover(DEMOS_GROUP)
    rows = [["distribution", "version", "commands", "demo"]]
    for dist in sorted(distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = dist.metadata["Name"] or ""
        if not name.startswith("paperpack-"):
            continue
        mine = [cmd for cmd, entry in commands.items() if entry.dist is not None and entry.dist.name == name]
        demo = [key for key, entry in demos.items() if entry.dist is not None and entry.dist.name == name]
        rows.append([name, dist.version, ", ".join(mine) or "-", ", ".join(demo) or "-"])
    if len(rows) == 1:
        print("No paperpack distributions are installed.")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from paperpack.core.demo import format_claims, run_demos

    available = discover(DEMOS_GROUP)
    if not available:
        print(
            "No paperpack package with a demo is installed; install one, e.g. `pip install paperpack-sewa`."
        )
        return 0
    selected = list(dict.fromkeys(args.only)) if args.only else list(available)
    unknown = [name for name in selected if name not in available]
    if unknown:
        raise ConfigError(
            f"--only names unknown demo(s) {', '.join(map(repr, unknown))}; installed: {', '.join(available)}"
        )
    from paperpack.core.files import atomic_folder, check_output

    output = check_output(args.output, command=DEMO_COMMAND, overwrite=args.overwrite)
    demos = {name: available[name].load() for name in selected}
    # Written beside the target and moved into place once every demo ran: an interrupted run leaves no output.
    with atomic_folder(output, command=DEMO_COMMAND, overwrite=args.overwrite) as staging:
        run = run_demos(demos, staging, scale="quick" if args.quick else "full", seed=args.seed)
    print(format_claims(run.reports))
    for name, error in run.failures.items():
        print(f"\n{name} FAILED: {error}", file=sys.stderr)
    print(f"\nResults: {Path(args.output) / 'results.md'} (and results.json, plots)")
    return 1 if run.failures else 0


def _build_parser(argv: Sequence[str]) -> ArgumentParser:
    parser = ArgumentParser(
        prog="paperpack",
        description="Faithful implementations of recent ML papers. `paperpack list` shows what is installed.",
    )
    parser.add_argument("--version", action="version", version=f"paperpack-core {version('paperpack-core')}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging; -vv for debug")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = subparsers.add_parser("list", help="show installed paperpack packages, versions and demos")
    listing.set_defaults(handler=_list)
    demo = subparsers.add_parser(
        "demo",
        help="run every installed package's demo and print its claims beside the baselines",
        description="Run each installed demo on built-in tiny models and data; print one table of the "
        "papers' claimed directions and whether they held; write results.json, results.md and plots.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="fewer seeds and steps: a smoke run, seconds to minutes per demo"
    )
    demo.add_argument("--only", nargs="+", metavar="NAME", default=[], help="run only these demos")
    add_shared_arguments(
        demo,
        "output",
        "overwrite",
        "seed",
        defaults={"output": "paperpack-demo"},
        help={"seed": "the base seed; a demo over several seeds uses seed, seed + 1, ..."},
    )
    demo.set_defaults(handler=_demo)
    chosen = next((token for token in argv if not token.startswith("-")), None)
    for name, entry in discover(COMMANDS_GROUP).items():
        sub = subparsers.add_parser(name, help=_summary(entry), description=_summary(entry))
        if name == chosen:
            configure: Callable[[argparse.ArgumentParser], Any] = entry.load()
            configure(sub)
    return parser


def _exit_status(code: object) -> int:
    return code if isinstance(code, int) else (0 if code is None else 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``paperpack`` command; returns the exit status (0 done, 2 bad usage or input, 130 interrupted).

    Examples:
        >>> from paperpack.core.cli import main
        >>> main(["list", "--no-such-flag"])
        2
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser(args_list)
        args = parser.parse_args(args_list)
    except PaperpackError as error:
        print(f"paperpack: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --version, and argparse's own errors (already printed)
        return _exit_status(done.code)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:  # a command that registered no handler
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except (PaperpackError, OSError, ValueError, TypeError) as error:
        if args.verbose >= 2:
            raise
        print(f"paperpack: error: {describe_arguments(args, str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paperpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
