"""The experiments at a small scale: shapes of the results, the budget rule, and the asymmetric direction."""

from __future__ import annotations

import pytest

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora.experiment import DigitsSetup, RegressionSetup, run_regression


def test_regression_counts_the_preheat_in_the_budget_and_hrp_beats_default_with_a_frozen_a() -> None:
    setup = RegressionSetup(steps=80, preheat_steps=8, preheat_ranks=(8, 64))
    results = run_regression(setup, [0])
    assert 0 < results.optimum < 1
    for regime in ("classic", "asymmetric"):
        arms = results.arms[regime]
        assert list(arms) == ["default", "PiSSA", "OLoRA", "oracle", "HRP R=8", "HRP R=64"]
        assert all(
            len(arm.curves[0]) == setup.steps for arm in arms.values()
        )  # the same budget for every arm
        assert all(0 <= value <= 1 for arm in arms.values() for value in arm.overlap)
    asym = results.arms["asymmetric"]
    # With A frozen the reachable error is fixed by A's row space: the oracle's is M's, HRP's nearly so, a
    # random A's almost never (measured: default ≈ 0.79, HRP R=64 ≈ 0.08, oracle ≈ 0.002 over 3 seeds).
    assert asym["HRP R=64"].final[0] < 0.5 * asym["default"].final[0]
    assert asym["oracle"].final[0] < asym["HRP R=64"].final[0]
    assert asym["oracle"].overlap[0] > 0.99


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RegressionSetup(rank=0), "`rank` must be >= 1"),
        (lambda: RegressionSetup(steps=10, preheat_steps=10), "`preheat_steps` must be <= 9"),
        (lambda: RegressionSetup(preheat_ranks=(2,)), "`preheat_ranks` must be >= 4"),
        (lambda: DigitsSetup(eval_every=0), "`eval_every` must be >= 1"),
        (lambda: run_regression(RegressionSetup(), []), "`seeds` must name at least one seed"),
    ],
)
def test_bad_setups(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()
