"""Deferred subcommands: flags built only when the subcommand parses or shows its help."""

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from paperpack.core import cli
from paperpack.core.subcommands import DeferredParser, add_subcommand

CALLS: list[str] = []


def _train_flags(parser):
    CALLS.append("train")
    from paperpack.core.commands import add_shared_arguments

    add_shared_arguments(parser, "output", "seed", "config", required=("output",))
    parser.set_defaults(handler=lambda args: 0 if args.seed == 3 else 1)


def configure(parser):
    commands = parser.add_subparsers(dest="toy_command")
    add_subcommand(commands, "train", _train_flags, help="train a toy")
    add_subcommand(commands, "other", lambda sub: CALLS.append("other"), help="another")


@pytest.fixture
def toy_cli(monkeypatch):
    CALLS.clear()
    commands = {"toy": EntryPoint("toy", "x:configure", cli.COMMANDS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: commands if group == cli.COMMANDS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)


def test_only_the_chosen_subcommand_is_configured(toy_cli, capsys):
    assert cli.main(["toy", "train", "--output", "o", "--seed", "3"]) == 0
    assert CALLS == ["train"]
    assert cli.main(["toy", "--help"]) == 0
    assert "train a toy" in capsys.readouterr().out
    assert CALLS == ["train"], "the parent's help configured a subcommand"


def test_help_errors_and_config_files_see_the_deferred_flags(toy_cli, capsys, tmp_path):
    assert cli.main(["toy", "train", "--help"]) == 0
    assert "--output" in capsys.readouterr().out
    assert cli.main(["toy", "train", "--seed", "3"]) == 2
    assert "--output" in capsys.readouterr().err
    assert cli.main(["toy", "train", "--output", "o", "--sed", "3"]) == 2
    assert "did you mean --seed" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("seed: 3\noutput: o\n")
    assert cli.main(["toy", "train", "--config", str(tmp_path / "run.yaml")]) == 0


def test_configure_runs_once_and_the_parser_keeps_the_core_rules():
    import argparse

    from paperpack.core.arguments import ArgumentParser

    calls = []
    parser = ArgumentParser(prog="p")
    commands = parser.add_subparsers(dest="command")
    sub = add_subcommand(commands, "run", lambda p: calls.append(p.add_argument("--learning-rate")), help="h")
    assert isinstance(sub, DeferredParser) and not sub.configured
    assert commands._parser_class is ArgumentParser, "the action's own parser class was changed"
    parser.parse_args(["run", "--learning-rate", "1"])
    parser.parse_args(["run"])
    assert len(calls) == 1 and sub.configured
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--learning-rat", "1"])  # no abbreviations: ArgumentParser's rules hold
    assert isinstance(sub, argparse.ArgumentParser)


def test_help_of_the_parent_imports_nothing_the_subcommand_needs():
    probe = (
        "import sys\n"
        "from paperpack.core.arguments import ArgumentParser\n"
        "from paperpack.core.subcommands import add_subcommand\n"
        "def heavy(p):\n"
        "    import transformers\n"
        "parser = ArgumentParser(prog='p')\n"
        "add_subcommand(parser.add_subparsers(dest='c'), 'train', heavy, help='h')\n"
        "try:\n"
        "    parser.parse_args(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")
