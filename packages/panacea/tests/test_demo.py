"""The demo through the core's runner, on a shrunken experiment (the real quick scale is measured in the docs)."""

from __future__ import annotations

import pytest

from paperpack.core.testing.contracts import check_demo
from paperpack.panacea import demo
from paperpack.panacea.experiment import ExperimentSettings

TINY = ExperimentSettings(
    seeds=(0,),
    align_steps=20,
    finetune_steps=3,
    finetune_samples=40,
    batch_size=8,
    panacea=((1.0, 1.0),),
    noise_norms=(1.0,),
    num_layers=2,
)


def test_demo_reports_every_arm_the_claims_and_the_plots(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(demo, "QUICK", TINY)
    report = check_demo(demo.run_demo, tmp_path, name="panacea")

    table = report.table("Harmful score (held-out requests)")
    arms = [row["arm"] for row in table.records()]
    assert arms == [
        "aligned (before fine-tuning)",
        "SFT",
        "SFT + noise (‖ε‖=1)",
        "SFT + ∇h (ρ=1)",
        "Panacea (ρ=1, λ=1) before ε",
        "Panacea (ρ=1, λ=1)",
    ]
    assert table.row("Panacea (ρ=1, λ=1)")["‖ε‖"] == pytest.approx(1.0, rel=1e-4)
    assert table.row("Panacea (ρ=1, λ=1) before ε")["‖ε‖"] == 0.0
    assert table.row("SFT + noise (‖ε‖=1)")["‖ε‖"] == pytest.approx(1.0, rel=1e-4)
    for claim in (
        "SFT on data with 10% harmful samples raises HS",
        "Panacea lowers HS below SFT's",
        "Panacea's accuracy stays within 2 points of SFT's",
        "Panacea: lower HS than random noise of the same norm",
    ):
        assert report.claim(claim).held in {True, False}
    assert report.claim("Layers have distinct safety coefficients").held is None
    assert {path.name for path in report.plots} == {"panacea_tradeoff.png", "panacea_layers.png"}
