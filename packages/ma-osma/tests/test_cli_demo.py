import json

import pytest

from paperpack.core.cli import main


@pytest.mark.slow
def test_simulate_command_writes_results_and_plots(tmp_path, capsys):
    output = tmp_path / "run"
    status = main(
        [
            "ma-osma",
            "simulate",
            "--agents",
            "4",
            "--targets",
            "5",
            "--rounds",
            "15",
            "--graph",
            "ring",
            "--seeds",
            "2",
            "--algorithms",
            "ma-osma",
            "osg-neighbours",
            "--output",
            str(output),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "MA-OSMA" in printed
    assert "OSG (neighbours)" in printed
    payload = json.loads((output / "results.json").read_text())
    assert [row["algorithm"] for row in payload["summary"]] == ["MA-OSMA", "OSG (neighbours)"]
    assert payload["metadata"]["config"]["graph"] == "ring"
    assert {p.name for p in output.iterdir()} == {
        "results.json",
        "utility.png",
        "average_regret.png",
        "targets_covered.png",
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--graph", "er:x"], "graph"), (["--eta", "0"], "eta"), (["--algorithms", "dqn"], "algorithms")],
)
def test_simulate_command_rejects_bad_input(tmp_path, capsys, arguments, message):
    status = main(["ma-osma", "simulate", "--output", str(tmp_path / "out"), *arguments])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_demo_reports_the_claims(tmp_path):
    from paperpack.core.demo import DemoContext
    from paperpack.ma_osma.demo import run_demo

    report = run_demo(DemoContext(name="ma-osma", output_dir=tmp_path, scale="quick", seed=0))
    assert len(report.claims) == 4
    assert [claim.held is None for claim in report.claims] == [True, True, False, False]
    assert all(plot.is_file() and plot.is_relative_to(tmp_path) for plot in report.plots)
    assert len(report.tables) == 2
    assert [row[0] for row in report.tables[0].rows] == ["MA-OSMA", "MA-OSEA", "OSG", "OSG (neighbours)"]
