"""The demo through the runner's contract (check_demo), on a few steps; the experiment's pieces by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from paperpack.core.testing.contracts import check_demo
from paperpack.tezo import demo
from paperpack.tezo.experiment import run_experiment


def test_demo_reports_every_method_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def short(**settings: object) -> object:
        return run_experiment(**{**settings, "steps": 3, "pretrain_steps": 3})  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "run_experiment", short)
    report = check_demo(demo.run_demo, tmp_path, name="tezo")
    table = report.table("Zeroth-order fine-tuning")
    assert table.column("method") == [
        "MeZO-SGD", "MeZO-Adam", "TeZO-SGD (r=8)", "TeZO-Adam (r=4)", "TeZO-Adam (r=8)", "LOZO (r=2, ν=50)",
    ]  # fmt: skip
    assert table.row("MeZO-SGD")["state bytes"] == 0
    assert table.row("MeZO-Adam")["memory / weights"] == "3.000"  # m and v: two copies of the weights
    assert table.row("TeZO-Adam (r=8)")["η (chosen)"] == "0.003"  # quick: the middle of the grid
    memory = report.claim("TeZO-Adam needs about 35%")
    assert memory.held is True and 0.35 < memory.method_value < 0.40
    assert report.claim("TeZO-SGD may trail").held is None
