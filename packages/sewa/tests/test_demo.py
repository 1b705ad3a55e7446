"""The digits demo on a shortened run: planted spikes land where intended and every arm is reported."""

from __future__ import annotations

import dataclasses

from paperpack.sewa.demo import DemoSettings, run_seed, train_trajectory

SHORT = dataclasses.replace(DemoSettings(), steps=360, window=12, k=3, iterations=30, random_draws=3)


def test_planted_spikes_fall_on_known_snapshots() -> None:
    run = train_trajectory(0, SHORT)
    assert len(run.snapshots) == 12
    # Snapshots at steps 250, 260, ..., 360; the spikes at steps 270 and 330 (30 + 60 j) are in the window.
    assert [i for i, bad in enumerate(run.bad) if bad] == [2, 8]
    clean = train_trajectory(0, SHORT, spikes=False)
    assert not any(clean.bad)


def test_every_arm_is_reported_and_sewa_skips_the_spikes() -> None:
    arms, sewa, run, seconds = run_seed(0, SHORT)
    assert list(arms) == [
        "last", "uniform", "LAWA (k=3)", "EMA (β=1-1/3)", "random (k=3)",
        "SeWA (k=3, train F)", "SeWA (k=3, val F, ablation)",
    ]  # fmt: skip
    assert arms["uniform"].bad_kept == 2
    assert arms["SeWA (k=3, train F)"].bad_kept == 0
    assert all(0.5 < arm.accuracy <= 1 for arm in arms.values())
    assert len(sewa.indices) == 3 and seconds > 0 and run.seconds_per_epoch > 0
