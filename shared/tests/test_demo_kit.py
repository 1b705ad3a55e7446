"""The demo kit: scale, the runner's thread guard, headless plots, summaries, claim tolerances, check_demo."""

import json
from importlib.metadata import EntryPoint

import matplotlib
import numpy as np
import pytest
import torch

from paperpack.core import cli
from paperpack.core.demo import (
    Claim,
    DemoContext,
    DemoReport,
    DemoTable,
    execute_demo,
    run_demos,
    single_thread,
)
from paperpack.core.errors import ConfigError
from paperpack.core.plotting import bar_plot, figure_file, line_plot, plot_mean_band, plot_points, style_axes
from paperpack.core.stats import (
    at_least,
    at_most,
    mean_std,
    paired_difference,
    smooth,
    standard_error,
    within,
)
from paperpack.core.testing.contracts import check_cli_fails_cleanly, check_demo

PNG = b"\x89PNG\r\n\x1a\n"


def test_mean_std_and_paired_difference():
    summary = mean_std([0.91, 0.93, 0.92])
    assert (round(summary.mean, 10), round(summary.std, 10), summary.n) == (0.92, 0.01, 3)
    assert str(summary) == "0.9200 ± 0.0100" and mean_std([2.0]).format(2) == "2.00"
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)
    paired = paired_difference([0.92, 0.90, 0.95], [0.90, 0.90, 0.96])
    assert (paired.wins, paired.ties, paired.n) == (1, 1, 3)
    assert str(paired) == "+0.0033 ± 0.0153 (>= 0 on 2/3 seeds)"
    loss = paired_difference([1.0, 2.0], [1.5, 1.0], higher_is_better=False)
    assert (loss.wins, str(loss)) == (1, "+0.2500 ± 1.0607 (<= 0 on 1/2 seeds)")
    with pytest.raises(ConfigError, match="one value per seed each, got 2 and 1"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match="at least one value"):
        mean_std([])


def test_smooth_is_a_trailing_moving_average():
    assert smooth([1, 2, 3, 4, 5], 3).tolist() == [2.0, 3.0, 4.0]
    curves = np.arange(12, dtype=float).reshape(2, 6)
    assert smooth(curves, 2).shape == (2, 5)
    assert smooth([1.0, 2.0], 5).tolist() == [1.0, 2.0]  # longer than the series: unchanged
    with pytest.raises(ConfigError, match="`window` must be an integer >= 1, got 0"):
        smooth([1.0], 0)


def test_claim_tolerances():
    assert at_least(0.915, 0.92, tolerance=0.005) and not at_least(0.914, 0.92, tolerance=0.005)
    assert at_most(1.01, 1.0, tolerance=0.01) and not at_most(1.02, 1.0, tolerance=0.01)
    assert within(0.995, 1.0, tolerance=0.01) and not within(float("nan"), 1.0, tolerance=1.0)
    assert not at_least(float("nan"), 0.0)
    with pytest.raises(ConfigError, match="`tolerance` must be a number >= 0"):
        at_least(1.0, 1.0, tolerance=-0.1)


def test_plots_are_written_headless_and_atomically(tmp_path):
    backend = matplotlib.get_backend()
    runs = {"method": [[3.0, 2.0, 1.5, 1.2], [3.2, 2.1, 1.4, 1.0]], "baseline": [3.0, 2.6, 2.3, 2.1]}
    lines = line_plot(tmp_path / "a" / "loss.png", runs, xlabel="step", ylabel="loss", smooth=2, log_y=True)
    bars = bar_plot(tmp_path / "bars.png", {"SeWA": mean_std([0.9, 0.92]), "last": 0.85}, xlabel="accuracy")
    with figure_file(tmp_path / "panels.png", panels=3) as (left, middle, right):
        plot_mean_band(left, [[1.0, 2.0], [2.0, 3.0]], label="x", band="se", marker="o")
        style_axes(left, xlabel="depth", ylabel="accuracy", ylim=(0, 1.02))
        plot_points(middle, {"a": (1.0, 0.5), "b": (2.0, 0.7)}, connect=True)
        style_axes(middle, xlabel="tokens", ylabel="accuracy", legend=False)
        right.text(0.5, 0.5, "free drawing")
    for path in (lines, bars, tmp_path / "panels.png"):
        assert path.read_bytes()[:8] == PNG
    assert matplotlib.get_backend() == backend
    with pytest.raises(RuntimeError), figure_file(tmp_path / "failed.png") as (axes,):
        axes.plot([1, 2])
        raise RuntimeError("drawing failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "bars.png", "panels.png"]
    with pytest.raises(ConfigError, match="must be a curve or a list of curves"):
        line_plot(tmp_path / "bad.png", {"x": [[1.0, 2.0], [1.0]]}, xlabel="", ylabel="")


def test_context_scale():
    ctx = DemoContext(name="toy", output_dir=None, scale="full", seed=5)  # type: ignore[arg-type]
    assert (ctx.pick(quick=1, full=2), ctx.seeds(quick=1, full=3), ctx.quick) == (2, [5, 6, 7], False)
    with pytest.raises(ConfigError, match="`scale` must be one of 'quick', 'full', got 'tiny'"):
        DemoContext(name="toy", output_dir=None, scale="tiny", seed=0)  # type: ignore[arg-type]


def toy_demo(ctx: DemoContext) -> DemoReport:
    assert torch.get_num_threads() == 1, "the runner runs demos on one thread"
    seeds = ctx.seeds(quick=2, full=4)
    method = [0.9 + 0.01 * s for s in seeds]
    baseline = [0.88 + 0.01 * s for s in seeds]
    plot = bar_plot(
        ctx.output_dir / "accuracy.png", {"method": mean_std(method), "baseline": mean_std(baseline)}
    )
    table = DemoTable(
        "Accuracy over seeds",
        ["arm", "accuracy"],
        [["method", str(mean_std(method))], ["baseline", str(mean_std(baseline))]],
    )
    claim = Claim(
        "method >= baseline", "method", "baseline", "accuracy", mean_std(method).mean, mean_std(baseline).mean,
        at_least(mean_std(method).mean, mean_std(baseline).mean, tolerance=0.005),
        note=str(paired_difference(method, baseline)),
    )  # fmt: skip
    return DemoReport("Toy", [claim], [table], [plot])


def test_check_demo_runs_the_quick_scale_as_the_runner_does(tmp_path):
    threads = torch.get_num_threads()
    report = check_demo(toy_demo, tmp_path, name="toy")
    assert torch.get_num_threads() == threads
    assert report.table("Accuracy").row("method")["accuracy"] == "0.9050 ± 0.0071"
    assert report.claim("method >=").held is True
    assert report.plots == [(tmp_path / "toy" / "accuracy.png").resolve()]
    with pytest.raises(KeyError, match="no row 'other'"):
        report.table("Accuracy").row("other")
    with pytest.raises(KeyError, match="0 tables' titles start with 'Loss'"):
        report.table("Loss")


def test_check_demo_fails_on_what_it_checks(tmp_path):
    def no_claims(ctx):
        return DemoReport("t", [])

    def ragged(ctx):
        return DemoReport(
            "t", [Claim("c", "m", "b", "x", 1.0, 0.0, True)], [DemoTable("t", ["a", "b"], [[1]])]
        )

    def outside(ctx):
        (tmp_path / "stray.txt").write_text("x")
        return DemoReport("t", [Claim("c", "m", "b", "x", 1.0, 0.0, True)])

    def nan_verdict(ctx):
        return DemoReport("t", [Claim("c", "m", "b", "x", float("nan"), 0.0, False)])

    def switches_backend(ctx):
        matplotlib.use("Agg")
        return DemoReport("t", [Claim("c", "m", "b", "x", 1.0, 0.0, True)])

    with pytest.raises(AssertionError, match="makes no claim"):
        check_demo(no_claims, tmp_path / "1")
    with pytest.raises(ConfigError, match="has 2 columns but rows of \\[1\\] cells"):
        check_demo(ragged, tmp_path / "2")
    with pytest.raises(AssertionError, match="wrote outside its folder"):
        check_demo(outside, tmp_path)
    with pytest.raises(AssertionError, match="judged on NaN"):
        check_demo(nan_verdict, tmp_path / "3")
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        with pytest.raises(AssertionError, match="changed matplotlib's backend"):
            check_demo(switches_backend, tmp_path / "4")
    finally:
        matplotlib.use(backend)


def test_single_thread_restores_threads_even_on_error():
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="boom"), single_thread():
        assert torch.get_num_threads() == 1
        raise ValueError("boom")
    assert torch.get_num_threads() == threads


def test_runner_writes_results_with_the_scale(tmp_path):
    run = run_demos({"toy": toy_demo}, tmp_path / "out", scale="full", seed=0)
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["scale"] == "full" and not run.failures
    assert "Scale: full." in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ConfigError, match="`scale` must be one of"):
        run_demos({"toy": toy_demo}, tmp_path / "x", scale="medium")  # type: ignore[arg-type]
    assert execute_demo("toy", toy_demo, tmp_path / "one", scale="quick").title == "Toy"


def test_demo_command_follows_the_output_policy(tmp_path, monkeypatch, capsys):
    demos = {"toy": EntryPoint("toy", "x:toy_demo", cli.DEMOS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: demos if group == cli.DEMOS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: toy_demo)
    output = tmp_path / "results"
    assert cli.main(["demo", "--quick", "--output", str(output)]) == 0
    assert (output / "results.json").is_file() and (output / "toy" / "accuracy.png").is_file()
    check_cli_fails_cleanly(
        ["demo", "--quick", "--output", str(output)], "--overwrite", paths=[tmp_path], output=output
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    check_cli_fails_cleanly(["demo", "--output", str(mine), "--overwrite"], "not empty", paths=[tmp_path])
    assert cli.main(["demo", "--output", str(output), "--overwrite"]) == 0
    assert json.loads((output / "results.json").read_text())["scale"] == "full"
