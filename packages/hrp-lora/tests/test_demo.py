"""The demo through the core's runner at a reduced size: claims, tables read by name, plots."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from paperpack.core.testing.contracts import check_demo
from paperpack.hrp_lora import demo
from paperpack.hrp_lora.experiment import DigitsSetup, RegressionSetup


def test_demo_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The quick scale takes ~40 s of CPU; the structure is the same at a tenth of the steps.
    monkeypatch.setattr(
        demo, "RegressionSetup", functools.partial(RegressionSetup, steps=60, preheat_ranks=(8, 32))
    )
    monkeypatch.setattr(
        demo,
        "DigitsSetup",
        functools.partial(DigitsSetup, hidden=32, pretrain_steps=60, steps=100, preheat_steps=10),
    )
    report = check_demo(demo.run_demo, tmp_path, name="hrp-lora")
    assert len(report.claims) == 6
    classic = report.table("A. regression, classic LoRA")
    assert classic.row("oracle")["excess at step 60"]
    assert {row["arm"] for row in classic.records()} == {
        "default",
        "PiSSA",
        "OLoRA",
        "oracle",
        "HRP R=8",
        "HRP R=32",
    }
    assert report.table("B. digits").row("HRP R=32")["step 100"]
    assert sorted(p.name for p in report.plots) == [
        "digits.png",
        "regression_asymmetric.png",
        "regression_classic.png",
    ]
    assert report.claim("the gain grows with the preheat rank R").held is not None
    assert report.claim("HRP approaches the oracle").note.startswith("HRP closes")
