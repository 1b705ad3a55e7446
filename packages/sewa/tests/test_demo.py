"""The digits experiment on a shortened run, and the demo's quick scale through the core's runner."""

from __future__ import annotations

import dataclasses

from paperpack.core.testing.contracts import check_demo
from paperpack.sewa.demo import run_demo
from paperpack.sewa.experiment import ArmNames, ExperimentSettings, run_experiment, run_seed, train_trajectory

SHORT = dataclasses.replace(ExperimentSettings(), steps=360, window=12, k=3, iterations=30, random_draws=3)


def test_planted_spikes_fall_on_known_snapshots() -> None:
    run = train_trajectory(0, SHORT)
    assert len(run.snapshots) == 12
    # Snapshots at steps 250, 260, ..., 360; the spikes at steps 270 and 330 (30 + 60 j) are in the window.
    assert [i for i, bad in enumerate(run.bad) if bad] == [2, 8]
    clean = train_trajectory(0, SHORT, spikes=False)
    assert not any(clean.bad)


def test_every_arm_is_reported_and_sewa_skips_the_spikes() -> None:
    result = run_seed(0, SHORT)
    names = ArmNames.for_k(3)
    assert list(result.arms) == [
        names.last, names.uniform, names.lawa, names.ema, names.random, names.sewa, names.sewa_val
    ]  # fmt: skip
    assert result.arms[names.uniform].bad_kept == 2
    assert result.arms[names.sewa].bad_kept == 0
    assert all(0.5 < arm.accuracy <= 1 for arm in result.arms.values())
    assert len(result.sewa.indices) == 3 and result.selection_seconds > 0
    assert result.trajectory.seconds_per_epoch > 0


def test_other_selection_seeds_are_measured() -> None:
    results = run_experiment([0], SHORT, clean=False, selection_seeds=[5, 6])
    assert results.clean is None and results.spread is not None
    (outcomes,) = results.spread
    assert len(outcomes) == 2 and all(0 <= outcome.bad_kept <= 2 for outcome in outcomes)
    assert results.values(results.names.sewa, "bad_kept") == [0.0]


def test_quick_demo_reports_the_claims(tmp_path) -> None:
    report = check_demo(run_demo, tmp_path, name="sewa")
    table = report.table("With planted spikes (2 seeds")
    assert [row["arm"] for row in table.records()] == list(ArmNames.for_k(5).__dict__.values())
    assert table.row("uniform")["planted-bad kept (of k)"] == 5
    assert table.row("SeWA (k=5, train F)")["planted-bad kept (of k)"] == 0
    assert report.claim("SeWA excludes planted-bad snapshots").held is True
    assert report.claim("averaging beats the last iterate").held is not None
