import json
import subprocess
import sys
from importlib.metadata import EntryPoint

import matplotlib
import pytest

from paperpack.core import cli
from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable, format_claims, run_demos
from paperpack.core.errors import ConfigError

matplotlib.use("Agg")


def fake_demo(ctx: DemoContext) -> DemoReport:
    import matplotlib.pyplot as plt

    assert ctx.output_dir.is_dir()
    values = list(ctx.progress(range(3), desc="steps"))
    figure, axis = plt.subplots()
    axis.plot(values)
    figure.savefig(ctx.output_dir / "curve.png")
    plt.close(figure)
    return DemoReport(
        title="A fake method",
        claims=[
            Claim("fake >= base", "fake", "base", "accuracy", 0.9, 0.8, True),
            Claim("fake matches base", "fake", "base", "loss", 1.0, 1.0, None, note="report only"),
        ],
        tables=[DemoTable("per seed", ["seed", "acc"], [[ctx.seed, 0.9]])],
        plots=[ctx.output_dir / "curve.png"],
        notes=["quick" if ctx.quick else "full"],
    )


def test_run_demos_writes_results(tmp_path):
    run = run_demos({"fake": fake_demo}, tmp_path / "out", scale="quick", seed=3)
    reports = run.reports
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["scale"] == "quick" and payload["demos"]["fake"]["plots"] == ["fake/curve.png"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| fake | fake | base | accuracy | 0.9 | 0.8 | fake >= base | yes |" in markdown
    assert "![curve](fake/curve.png)" in markdown and "reported" in markdown
    table = format_claims(reports)
    assert table.splitlines()[0].startswith("package") and "reported" in table


def test_a_failing_demo_is_recorded_and_the_others_still_run(tmp_path):
    def broken(ctx):
        raise RuntimeError("out of luck")

    demos = {
        "bad-type": lambda ctx: {},
        "no-plot": lambda ctx: DemoReport("t", [], plots=[ctx.output_dir / "no.png"]),
        "outside": lambda ctx: DemoReport("t", [], plots=[tmp_path / "elsewhere.png"]),
        "broken": broken,
        "fake": fake_demo,
    }
    (tmp_path / "elsewhere.png").write_bytes(b"")
    run = run_demos(demos, tmp_path / "out")
    assert list(run.reports) == ["fake"]
    assert run.failures["bad-type"] == "ConfigError: demo 'bad-type' returned dict, not a DemoReport"
    assert "missing" in run.failures["no-plot"] and "outside" in run.failures["outside"]
    assert run.failures["broken"] == "RuntimeError: out of luck"
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(payload["failures"]) == {"bad-type", "no-plot", "outside", "broken"}
    assert "**broken failed**: RuntimeError: out of luck" in (tmp_path / "out" / "results.md").read_text()


def entry(name, value, group):
    return EntryPoint(name=name, value=value, group=group)


def test_demo_command_with_fake_registry(tmp_path, monkeypatch, capsys):
    demos = {"fake": entry("fake", "tests_fake:fake_demo", cli.DEMOS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: demos if group == cli.DEMOS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: fake_demo)
    assert cli.main(["demo", "--quick", "--output", str(tmp_path / "o"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "fake >= base" in out and "results.md" in out
    assert (tmp_path / "o" / "results.json").is_file()
    assert cli.main(["demo", "--only", "nope"]) == 2
    assert "unknown demo(s) 'nope'; installed: fake" in capsys.readouterr().err
    monkeypatch.setattr(EntryPoint, "load", lambda self: lambda ctx: 1 / 0)
    assert cli.main(["demo", "--output", str(tmp_path / "o2")]) == 1
    assert "fake FAILED: ZeroDivisionError" in capsys.readouterr().err


def test_demo_with_nothing_installed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "discover", lambda group: {})
    assert cli.main(["demo"]) == 0
    assert "No paperpack package with a demo is installed" in capsys.readouterr().out


def test_registration_is_validated(monkeypatch):
    def fake_entry_points(group):
        return [entry("Bad Name", "x:y", group)]

    monkeypatch.setattr(cli, "entry_points", fake_entry_points)
    with pytest.raises(ConfigError, match="names use lowercase"):
        cli.discover(cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry("list", "x:y", group)])
    with pytest.raises(ConfigError, match="a built-in command"):
        cli.discover(cli.COMMANDS_GROUP)
    monkeypatch.setattr(
        cli, "entry_points", lambda group: [entry("a", "x:y", group), entry("a", "z:w", group)]
    )
    with pytest.raises(ConfigError, match="registered by both"):
        cli.discover(cli.COMMANDS_GROUP)


def test_subcommand_is_loaded_only_when_chosen(monkeypatch, capsys):
    calls = []

    def configure(parser):
        calls.append(parser.prog)
        parser.add_argument("--x", type=int, required=True)
        parser.set_defaults(handler=lambda args: 7 if args.x == 1 else 0)

    commands = {"thing": entry("thing", "x:configure", cli.COMMANDS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: commands if group == cli.COMMANDS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)
    assert cli.main(["list"]) == 0 and calls == []
    assert cli.main(["thing", "--x", "1"]) == 7 and calls == ["paperpack thing"]


def test_handler_errors_are_reported_without_traceback(monkeypatch, capsys):
    def configure(parser):
        def fail(args):
            raise ConfigError("`k` must be >= 1, got 0")

        parser.set_defaults(handler=fail)

    monkeypatch.setattr(
        cli, "discover", lambda group: {"t": entry("t", "x:y", group)} if group == cli.COMMANDS_GROUP else {}
    )
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)
    assert cli.main(["t"]) == 2
    assert capsys.readouterr().err.strip() == "paperpack: error: `k` must be >= 1, got 0"


def test_console_script_help_and_list():
    result = subprocess.run(
        [sys.executable, "-m", "paperpack.core.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout and "list" in result.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "paperpack.core.cli", "list"], capture_output=True, text=True, check=True
    )
    assert "paperpack-core" in listing.stdout
    assert cli.main([]) == 2
