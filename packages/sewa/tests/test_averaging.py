"""The baselines of average_snapshots, written against their defining recursions."""

from __future__ import annotations

import copy

import pytest
import torch

from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.sewa import average_snapshots, baseline_weights
from paperpack.sewa._reference import reference_ema, reference_mean


def _window(size: int = 6) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "a": torch.randn(3, 2, generator=generator),
            "b": torch.randn(4, generator=generator).to(torch.bfloat16),
            "steps": torch.tensor(10 * i),
        }
        for i in range(size)
    ]


def _assert_equal(actual, expected) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


def test_last_uniform_lawa() -> None:
    window = _window()
    _assert_equal(average_snapshots(window, "last"), reference_mean(window, [5]))
    _assert_equal(average_snapshots(window, "uniform"), reference_mean(window, range(6)))
    _assert_equal(average_snapshots(window, "lawa", k=2), reference_mean(window, [4, 5]))


def test_ema_follows_its_recursion() -> None:
    window = _window()
    result = average_snapshots(window, "ema", decay=0.7)
    torch.testing.assert_close(result["a"], reference_ema(window, "a", 0.7).float(), rtol=1e-6, atol=1e-6)
    assert int(result["steps"]) == 50
    default = average_snapshots(window, "ema", k=4)
    explicit = average_snapshots(window, "ema", decay=0.75)
    _assert_equal(default, explicit)


def test_random_is_seeded_and_keeps_k() -> None:
    window = _window(10)
    weights = baseline_weights(10, "random", k=3, seed=7)
    chosen = [i for i, w in enumerate(weights) if w]
    assert len(chosen) == 3 and weights == baseline_weights(10, "random", k=3, seed=7)
    assert any(baseline_weights(10, "random", k=3, seed=s) != weights for s in range(1, 5))
    _assert_equal(average_snapshots(window, "random", k=3, seed=7), reference_mean(window, chosen))


@pytest.mark.parametrize("strategy", ["last", "uniform", "lawa", "ema", "random"])
def test_weights_sum_to_one(strategy: str) -> None:
    weights = baseline_weights(9, strategy, k=None if strategy in ("last", "uniform") else 4)
    assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0


def test_inputs_not_modified() -> None:
    window = _window()
    before = copy.deepcopy(window)
    for strategy in ("last", "uniform", "lawa", "ema", "random"):
        average_snapshots(window, strategy, k=None if strategy in ("last", "uniform") else 2)
    for original, now in zip(before, window, strict=True):
        _assert_equal(now, original)


def test_bad_input() -> None:
    window = _window(4)
    with pytest.raises(
        ConfigError, match=r"`strategy` must be one of 'last', 'uniform', 'lawa', 'ema', 'random', got 'swa'"
    ):
        average_snapshots(window, "swa")
    with pytest.raises(ConfigError, match=r"strategy 'lawa' needs `k`"):
        average_snapshots(window, "lawa")
    with pytest.raises(ConfigError, match=r"`k` must be <= 4, got 5"):
        average_snapshots(window, "lawa", k=5)
    with pytest.raises(ConfigError, match=r"`k` must be >= 1, got 0"):
        average_snapshots(window, "random", k=0)
    with pytest.raises(ConfigError, match=r"`decay` must be in \[0, 1\), got 1.0"):
        average_snapshots(window, "ema", decay=1.0)
    with pytest.raises(ConfigError, match=r"strategy 'ema' needs `decay`"):
        average_snapshots(window, "ema")
    with pytest.raises(ConfigError, match=r"`decay` applies to strategy 'ema' only"):
        average_snapshots(window, "uniform", decay=0.5)
    with pytest.raises(ConfigError, match=r"`k` does not apply to strategy 'uniform'"):
        average_snapshots(window, "uniform", k=2)
    with pytest.raises(ConfigError, match=r"`snapshots` is empty"):
        average_snapshots([], "uniform")
    window[2] = {**window[2], "a": torch.zeros(2, 3)}
    with pytest.raises(CheckpointError, match=r"`snapshots\[2\]\['a'\]` has shape \(2, 3\)"):
        average_snapshots(window, "uniform")
