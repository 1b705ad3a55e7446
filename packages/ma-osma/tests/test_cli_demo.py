import json

import pytest

from paperpack.core.cli import main
from paperpack.core.testing.contracts import check_cli_fails_cleanly, check_demo

SMALL = ["--agents", "4", "--targets", "5", "--rounds", "15", "--graph", "ring", "--seeds", "2"]


@pytest.mark.slow
def test_simulate_command_writes_results_and_plots(tmp_path, capsys):
    output = tmp_path / "run"
    argv = ["ma-osma", "simulate", *SMALL, "--algorithms", "ma-osma", "osg-neighbours", "--no-progress"]
    assert main([*argv, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "MA-OSMA" in printed
    assert "OSG (neighbours)" in printed
    payload = json.loads((output / "results.json").read_text())
    assert [row["algorithm"] for row in payload["summary"]] == ["MA-OSMA", "OSG (neighbours)"]
    assert payload["metadata"]["config"]["graph"] == "ring"
    assert {p.name for p in output.iterdir() if not p.name.startswith(".")} == {
        "results.json",
        "utility.png",
        "average_regret.png",
        "targets_covered.png",
    }
    # An earlier output is replaced only with --overwrite; the second spelling of a flag works too.
    check_cli_fails_cleanly([*argv, "--output", str(output)], r"--output.*--overwrite", paths=[tmp_path])
    assert main([*argv, "--output", str(output), "--overwrite", "--n_samples", "2"]) == 0
    payload = json.loads((output / "results.json").read_text())
    assert payload["metadata"]["config"]["n_samples"] == 2


def test_simulate_command_reads_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "agents: 3\ntargets: 4\nrounds: 5\ngraph: path\nseeds: 1\neta: 3e2\nalgorithms: [osg]\n"
    )
    output = tmp_path / "run"
    assert (
        main(["ma-osma", "simulate", "--config", str(config), "--output", str(output), "--no-progress"]) == 0
    )
    payload = json.loads((output / "results.json").read_text())
    assert payload["metadata"]["config"]["eta"] == 300.0 and payload["metadata"]["rounds"] == 5


BAD_INPUT = [
    (["--graph", "er:x"], r"`--graph` er:<average degree> needs a number"),
    (["--eta", "0"], r"`--eta` must be > 0, got 0"),
    (["--eta", "nan"], r"`--eta` must be a finite number"),
    (["--mix", "1.5"], r"`--mix` must be in \(0, 1\]"),
    (["--algorithms", "dqn"], r"`--algorithms` must hold names from ma-osma, ma-osea, osg, osg-neighbours"),
    (["--algorithms", "osg", "osg"], r"`--algorithms` must not repeat a name"),
    (["--motion", "zigzag"], r"--motion.*must be one of"),
    (["--rounds", "1e12"], r"`--rounds` must be an integer, got '1e12'"),
    (["--rounds", "1000000000000"], r"`--rounds` must leave the per-round results in memory"),
    (["--rounds", "0"], r"`--rounds` must be >= 1, got 0"),
    (["--agents", "-3"], r"`--agents` must be >= 1"),
    (["--seed", "-1"], r"`--seed` must be >= 0"),
    (["--graph", "er:4", "--agents", "3"], r"average degree must be in \(0, 2\]"),
]


@pytest.mark.parametrize(("arguments", "match"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_simulate_command_rejects_bad_input(tmp_path, arguments, match):
    output = tmp_path / "out"
    argv = ["ma-osma", "simulate", "--output", str(output), "--no-progress", *arguments]
    check_cli_fails_cleanly(argv, match, paths=[tmp_path], output=output)


def test_simulate_command_never_replaces_what_is_not_its_own(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"the user": "results"}')
    argv = ["ma-osma", "simulate", *SMALL, "--no-progress", "--output", str(mine)]
    check_cli_fails_cleanly(argv, r"--output", paths=[tmp_path])
    check_cli_fails_cleanly([*argv, "--overwrite"], r"--output", paths=[tmp_path])
    check_cli_fails_cleanly(["ma-osma"], r"", status=2)  # a bare command prints its help


@pytest.mark.slow
def test_quick_demo_reports_the_claims(tmp_path):
    from paperpack.ma_osma.demo import run_demo

    report = check_demo(run_demo, tmp_path, name="ma-osma")
    assert [claim.held is None for claim in report.claims] == [True, True, False, False]
    assert len(report.tables) == 2
    complete = report.table("complete graph")
    assert complete.column("algorithm") == ["MA-OSMA", "MA-OSEA", "OSG", "OSG (neighbours)"]
    assert report.claim("MA-OSMA's utility > OSG (neighbours)'s on the sparse graph").held is True
