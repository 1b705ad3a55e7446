import functools
import itertools

import numpy as np
import pytest
from scipy import integrate, stats

from paperpack.ma_osma import FacilityLocation, WeightedCoverage
from paperpack.ma_osma._reference import multilinear, multilinear_gradient, surrogate_gradient
from paperpack.ma_osma.gradient import boosted_gradient, sample_z, surrogate_scale, z_density
from paperpack.ma_osma.partition import Partition


@pytest.mark.parametrize("curvature", [0.2, 0.5, 1.0])
def test_z_sampler_follows_its_density(curvature):
    z = sample_z(np.random.default_rng(0), 20_000, curvature)
    grid = np.linspace(0.0, 1.0, 2001)
    cdf_values = integrate.cumulative_trapezoid(z_density(grid, curvature), grid, initial=0.0)

    def cdf(points):
        return np.interp(points, grid, cdf_values)

    assert cdf_values[-1] == pytest.approx(1.0, abs=1e-6)
    assert stats.kstest(z, cdf).pvalue > 0.01


def test_z_density_integrates_to_one_and_scale_is_the_ratio():
    for c in (0.1, 0.7, 1.0):
        grid = np.linspace(0, 1, 100_001)
        assert np.trapezoid(z_density(grid, c), grid) == pytest.approx(1.0, abs=1e-8)
        assert surrogate_scale(c) == pytest.approx((1 - np.exp(-c)) / c)
    assert z_density(np.array([-0.1, 1.1]), 1.0).tolist() == [0.0, 0.0]


def test_multilinear_reference_is_consistent():
    f = WeightedCoverage(np.eye(3, dtype=bool))
    assert multilinear(lambda s: f.value(sorted(s)), [0.5, 0.25, 1.0]) == pytest.approx(1.75)
    assert multilinear_gradient(lambda s: f.value(sorted(s)), [0.5, 0.25, 1.0]) == pytest.approx(
        [1.0, 1.0, 1.0]
    )


def _problem():
    rng = np.random.default_rng(4)
    objective = FacilityLocation(rng.random((6, 4)) ** 2)
    partition = Partition([[0, 1], [2, 3], [4, 5]])
    X = rng.random((3, 6)) * 0.5
    return objective, partition, X


@pytest.mark.parametrize(
    ("z_sampling", "curvature"), [("importance", 1.0), ("importance", 0.3), ("uniform", 0.6)]
)
def test_estimator_mean_matches_exact_surrogate_gradient(z_sampling, curvature):
    objective, partition, X = _problem()

    @functools.cache
    def f(s):
        return objective.value(sorted(s))

    n_samples = 40_000
    rng = np.random.default_rng(5)
    estimate = boosted_gradient(
        objective, X, partition, curvature=curvature, n_samples=n_samples, z_sampling=z_sampling, rng=rng
    )
    # Per-sample spread, for a 4-sigma tolerance on the mean of n_samples draws.
    spread = boosted_gradient(
        objective,
        X,
        partition,
        curvature=curvature,
        n_samples=1,
        z_sampling=z_sampling,
        rng=np.random.default_rng(6),
    )
    for i, block in enumerate(partition.blocks):
        exact = surrogate_gradient(f, X[i].tolist(), curvature)
        for k, v in enumerate(block):
            tolerance = 4 * max(float(np.abs(spread).max()), 1.0) / np.sqrt(n_samples)
            assert estimate[i, k] == pytest.approx(exact[v], abs=tolerance)


def test_no_z_sampling_estimates_the_plain_gradient():
    objective, partition, X = _problem()
    estimate = boosted_gradient(
        objective,
        X,
        partition,
        curvature=1.0,
        n_samples=40_000,
        z_sampling="none",
        rng=np.random.default_rng(7),
    )
    for i, block in enumerate(partition.blocks):
        exact = multilinear_gradient(lambda s: objective.value(sorted(s)), X[i].tolist())
        np.testing.assert_allclose(estimate[i, : len(block)], [exact[v] for v in block], atol=0.02)


def test_surrogate_gradient_has_the_boosting_weight():
    # For a modular f the gradient is constant, so ∇F^s = ((1 - e^{-c}) / c) ∇F.
    weights = np.array([1.0, 2.0, 3.0])
    f = WeightedCoverage(np.eye(3, dtype=bool), weights)
    for c in (0.25, 1.0):
        got = surrogate_gradient(lambda s: f.value(sorted(s)), [0.3, 0.6, 0.9], c)
        np.testing.assert_allclose(got, surrogate_scale(c) * weights, rtol=1e-10)


def test_estimator_costs_two_oracle_calls_per_action_and_pads_are_zero():
    from paperpack.ma_osma import CountingObjective

    objective = CountingObjective(FacilityLocation(np.ones((5, 2))))
    partition = Partition([[0, 1, 2], [3], [4]])
    estimate = boosted_gradient(
        objective,
        np.zeros((3, 5)),
        partition,
        curvature=1.0,
        n_samples=1,
        z_sampling="importance",
        rng=np.random.default_rng(0),
    )
    assert objective.calls == 2 * 3 * 3  # padded to K = 3 per agent; 2 * sum |V_i| = 10 for unpadded blocks
    assert estimate[1, 1:].tolist() == [0.0, 0.0]
    assert list(itertools.chain.from_iterable(partition.padded.tolist())) == [0, 1, 2, 3, 3, 3, 4, 4, 4]
