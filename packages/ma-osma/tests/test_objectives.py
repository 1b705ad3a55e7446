import numpy as np
import pytest

from paperpack.core.errors import ConfigError
from paperpack.ma_osma import CountingObjective, FacilityLocation, TrackingObjective, WeightedCoverage
from paperpack.ma_osma import objectives as objectives_module
from paperpack.ma_osma._reference import coverage_value, facility_value


def _random_coverage(rng, n=7, elements=9):
    return WeightedCoverage(rng.random((n, elements)) < 0.3, rng.random(elements) * 3)


def _random_facility(rng, n=7, customers=5):
    return FacilityLocation(rng.random((n, customers)) * (rng.random((n, customers)) < 0.7))


def _literal(objective):
    if isinstance(objective, WeightedCoverage):
        return lambda s: coverage_value(objective.covers, objective.weights, s)
    return lambda s: facility_value(objective.similarity, s)


@pytest.fixture(params=["coverage", "facility", "facility-chunked"])
def objective(request, monkeypatch):
    rng = np.random.default_rng(0)
    if request.param == "facility-chunked":
        monkeypatch.setattr(objectives_module, "_CHUNK_ENTRIES", 1)  # one row per chunk
    return _random_coverage(rng) if request.param == "coverage" else _random_facility(rng)


def test_value_matches_literal_definition(objective):
    literal = _literal(objective)
    rng = np.random.default_rng(1)
    masks = rng.random((20, objective.n)) < 0.4
    masks[0] = False
    expected = [literal(np.flatnonzero(m).tolist()) for m in masks]
    np.testing.assert_allclose(objective.values(masks), expected, rtol=0, atol=1e-12)
    assert objective.value([]) == 0.0
    assert objective.value([2, 2, 3]) == pytest.approx(literal([2, 3]))


def test_marginal_gains_are_differences_of_values(objective):
    literal = _literal(objective)
    rng = np.random.default_rng(2)
    masks = rng.random((15, objective.n)) < 0.4
    candidates = rng.integers(0, objective.n, (15, 4))
    gains = objective.marginal_gains(masks, candidates)
    for b in range(15):
        members = set(np.flatnonzero(masks[b]).tolist())
        for k, v in enumerate(candidates[b]):
            expected = literal(sorted(members | {int(v)})) - literal(sorted(members - {int(v)}))
            assert gains[b, k] == pytest.approx(expected, abs=1e-12)


def test_objectives_are_monotone_and_submodular(objective):
    rng = np.random.default_rng(3)
    for _ in range(30):
        small = rng.random(objective.n) < 0.3
        large = small | (rng.random(objective.n) < 0.3)
        v = int(rng.integers(objective.n))
        small[v] = large[v] = False
        gains = objective.marginal_gains(np.stack([small, large]), np.array([[v], [v]]))
        assert gains[0, 0] >= gains[1, 0] - 1e-12 >= -1e-12


def test_ties_between_best_members_are_handled():
    f = FacilityLocation(np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]]))
    gains = f.marginal_gains(np.array([[True, True, False]]), np.array([[0, 1, 2]]))
    np.testing.assert_allclose(gains, [[0.0, 0.0, 0.0]])
    gains = f.marginal_gains(np.array([[True, False, True]]), np.array([[0, 2]]))
    np.testing.assert_allclose(gains, [[0.5, 0.0]])


@pytest.mark.parametrize("chunk_entries", [1, 1 << 18])
def test_facility_gains_with_repeated_member_candidates_and_ties(monkeypatch, chunk_entries):
    # Small integer similarities tie often; candidates repeat items, many of them members of S_b: the
    # paths where removing v changes the maximum.
    monkeypatch.setattr(objectives_module, "_CHUNK_ENTRIES", chunk_entries)
    rng = np.random.default_rng(5)
    f = FacilityLocation(rng.integers(0, 3, (8, 4)).astype(np.float64))
    masks = rng.random((40, 8)) < rng.random((40, 1))
    candidates = rng.integers(0, 8, (40, 6))
    candidates[:, 1] = candidates[:, 0]
    gains = f.marginal_gains(masks, candidates)
    for b in range(40):
        members = set(np.flatnonzero(masks[b]).tolist())
        for k, v in enumerate(candidates[b].tolist()):
            expected = facility_value(f.similarity, sorted(members | {v})) - facility_value(
                f.similarity, sorted(members - {v})
            )
            assert gains[b, k] == expected
    np.testing.assert_array_equal(
        f.values(masks), [facility_value(f.similarity, np.flatnonzero(m).tolist()) for m in masks]
    )
    assert f.marginal_gains(np.zeros((0, 8), dtype=bool), np.zeros((0, 3), dtype=np.int64)).shape == (0, 3)


def test_tracking_objective_is_inverse_distance_facility_location():
    agents = np.array([[0.0, 0.0], [10.0, 0.0]])
    moves = np.array([[0.0, 0.0], [1.0, 0.0]])
    targets = np.array([[3.0, 4.0], [10.0, 0.0]])
    f = TrackingObjective(agents, moves, targets, step=2.0, offset=1.0)
    assert f.n == 4
    # action 1 of agent 0 lands on (2, 0): distance sqrt(17) to target 0, 8 to target 1.
    assert f.value([1]) == pytest.approx(1 / (1 + np.sqrt(17)) + 1 / 9)
    # with agent 1 staying on target 1: target 0 is still best served by agent 0 (sqrt(17) < sqrt(65)).
    assert f.value([2, 1]) == pytest.approx(1 / (1 + np.sqrt(17)) + 1.0)


def test_counting_objective_counts_two_calls_per_gain():
    f = CountingObjective(FacilityLocation(np.ones((4, 2))))
    f.value([0])
    f.values(np.zeros((3, 4), dtype=bool))
    f.marginal_gains(np.zeros((2, 4), dtype=bool), np.zeros((2, 3), dtype=np.int64))
    assert f.calls == 1 + 3 + 12
    assert f.n == 4


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: WeightedCoverage(np.ones((2, 3))), "covers"),
        (lambda: WeightedCoverage(np.ones((2, 3), dtype=bool), [1.0, -1.0, 1.0]), "weights"),
        (lambda: WeightedCoverage(np.ones((2, 3), dtype=bool), [1.0, 1.0]), "weights"),
        (lambda: FacilityLocation(-np.ones((2, 2))), "similarity"),
        (lambda: FacilityLocation(np.ones(3)), "similarity"),
        (lambda: FacilityLocation([[np.nan, 1.0]]), "similarity"),
        (lambda: TrackingObjective(np.zeros((2, 3)), np.zeros((1, 2)), np.zeros((1, 2))), "agent_positions"),
        (
            lambda: TrackingObjective(np.zeros((2, 2)), np.zeros((1, 2)), np.zeros((1, 2)), offset=0.0),
            "offset",
        ),
    ],
)
def test_bad_objective_arguments(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_bad_queries_name_the_argument():
    f = FacilityLocation(np.ones((3, 2)))
    with pytest.raises(ConfigError, match="selection"):
        f.value([0, 3])
    with pytest.raises(ConfigError, match="selection"):
        f.value([0.5])
    with pytest.raises(ConfigError, match="masks"):
        f.values(np.zeros((2, 4), dtype=bool))
    with pytest.raises(ConfigError, match="masks"):
        f.values(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="candidates"):
        f.marginal_gains(np.zeros((2, 3), dtype=bool), np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(ConfigError, match="candidates"):
        f.marginal_gains(np.zeros((1, 3), dtype=bool), np.array([[3]]))


def test_inputs_are_not_modified():
    sim = np.random.default_rng(0).random((5, 3))
    f = FacilityLocation(sim)
    sim[0, 0] = 100.0
    assert f.similarity[0, 0] != 100.0
    masks = np.zeros((2, 5), dtype=bool)
    masks[0, 1] = True
    candidates = np.array([[1, 2], [0, 4]])
    before = (masks.copy(), candidates.copy())
    f.marginal_gains(masks, candidates)
    np.testing.assert_array_equal(masks, before[0])
    np.testing.assert_array_equal(candidates, before[1])
