import functools
import math
import warnings

import networkx as nx
import numpy as np
import pytest

from paperpack.core.errors import ConfigError
from paperpack.ma_osma import (
    MAOSEA,
    MAOSMA,
    OSG,
    FacilityLocation,
    consensus_matrix,
    offline_greedy,
)
from paperpack.ma_osma._reference import (
    ReferenceOSG,
    consensus_round,
    entropic_step,
    euclidean_step,
    greedy,
    sample_block,
)
from paperpack.ma_osma.gradient import sample_z, surrogate_scale

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10, 11]]
RING_BLOCKS = [[2 * i, 2 * i + 1] for i in range(16)]


def _objective(seed=0, n=12, customers=6):
    return FacilityLocation(np.random.default_rng(seed).random((n, customers)) ** 3)


def _set_function(objective):
    return functools.cache(lambda s: objective.value(sorted(s)))


def _W():
    return consensus_matrix(nx.path_graph(4))[0]


def test_sparse_graphs_mix_through_a_sparse_matrix():
    from scipy import sparse

    ring = MAOSMA(RING_BLOCKS, consensus_matrix(nx.cycle_graph(16))[0], eta=1.0)
    path = MAOSMA(BLOCKS, _W(), eta=1.0)
    assert sparse.issparse(ring._mixing)
    assert not sparse.issparse(path._mixing)


@pytest.mark.parametrize("algorithm", ["ma-osma", "ma-osea"])
@pytest.mark.parametrize(("blocks", "graph"), [(BLOCKS, nx.path_graph(4)), (RING_BLOCKS, nx.cycle_graph(16))])
def test_vectorized_rounds_match_the_literal_reference(algorithm, blocks, graph):
    n_agents, n = len(blocks), max(map(max, blocks)) + 1
    objectives = [_objective(seed, n=n) for seed in range(6)]
    W = consensus_matrix(graph)[0]
    if algorithm == "ma-osma":
        learner = MAOSMA(blocks, W, eta=0.7, curvature=0.8, n_samples=2, seed=3)
        step = functools.partial(euclidean_step, eta=0.7)
    else:
        learner = MAOSEA(blocks, W, eta=2.0, mix=0.05, curvature=0.8, n_samples=2, seed=3)
        step = functools.partial(entropic_step, eta=2.0, mix=0.05)

    mirror = np.random.default_rng(3)  # replays the learner's draws in the order it makes them
    X = learner.decisions
    for objective in objectives:
        actions = learner.act()
        uniforms = mirror.random(n_agents)
        for i, block in enumerate(blocks):
            assert actions[i] == sample_block([X[i, a] for a in block], block, uniforms[i])
        learner.update(objective)
        z = sample_z(mirror, (n_agents, 2), 0.8)
        draws = mirror.random((n_agents, 2, n))
        weight = np.full((n_agents, 2), surrogate_scale(0.8))
        X = consensus_round(
            _set_function(objective), X, W, blocks=blocks, z=z, weight=weight, uniforms=draws, step=step
        )
        np.testing.assert_allclose(learner.decisions, X, atol=1e-10)


@pytest.mark.parametrize("graph", [None, nx.path_graph(4)])
def test_osg_matches_the_literal_reference(graph):
    visible = np.tri(4, k=-1, dtype=bool)
    if graph is not None:
        visible &= nx.to_numpy_array(graph, dtype=bool)
    osg = OSG(BLOCKS, horizon=50, graph=graph, seed=11)
    reference = ReferenceOSG(BLOCKS, 50, visible)
    mirror = np.random.default_rng(11)
    for t in range(25):
        objective = _objective(t)
        actions = osg.act()
        assert actions == reference.act(mirror.random(4))
        osg.update(objective)
        reference.update(_set_function(objective), actions)
    for i, block in enumerate(BLOCKS):
        np.testing.assert_allclose(osg.expert_weights[i], reference.q[i], rtol=1e-10)
        np.testing.assert_allclose(osg.action_weights[i, :, : len(block)], reference.w[i], rtol=1e-10)


def test_osg_rates_follow_the_public_code():
    osg = OSG([[0, 1, 2]], horizon=1250)
    assert osg.expert_weights.shape == (1, 11)  # ceil(log2 1250)
    assert osg.meta_rate == pytest.approx(math.sqrt(math.log(11) / 1250))
    assert osg.share_rate == pytest.approx(1 / 1250)
    assert osg.expert_rates[0, 2] == pytest.approx(math.sqrt(math.log(3 * 1250) / 4))
    assert OSG([[0]], horizon=1).expert_weights.shape == (1, 1)


def test_greedy_matches_the_literal_reference():
    for seed in range(10):
        objective = _objective(seed)
        assert offline_greedy(objective, BLOCKS) == greedy(_set_function(objective), BLOCKS)


def _algorithms(horizon=60):
    W = _W()
    return {
        "ma-osma": lambda seed: MAOSMA(BLOCKS, W, eta=1.0, seed=seed),
        "ma-osea": lambda seed: MAOSEA(BLOCKS, W, eta=3.0, seed=seed),
        "osg": lambda seed: OSG(BLOCKS, horizon=horizon, seed=seed),
        "osg-graph": lambda seed: OSG(BLOCKS, horizon=horizon, graph=nx.path_graph(4), seed=seed),
    }


@pytest.mark.parametrize("name", list(_algorithms()))
def test_actions_respect_the_partition_and_runs_are_reproducible(name):
    build = _algorithms()[name]

    def run(seed):
        algorithm, played = build(seed), []
        for t in range(30):
            actions = algorithm.act()
            assert len(actions) == len(BLOCKS)
            assert all(a in block for a, block in zip(actions, BLOCKS, strict=True))
            played.append(actions)
            algorithm.update(_objective(t % 3))
        return played

    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_algorithms()))
def test_average_regret_falls_on_a_stationary_objective(name):
    objective = _objective(42)
    best = objective.value(offline_greedy(objective, BLOCKS))
    build = _algorithms(horizon=400)[name]
    regrets = []
    for seed in range(4):
        algorithm = build(seed)
        regret = []
        for _ in range(400):
            regret.append(best - objective.value(algorithm.act()))
            algorithm.update(objective)
        regrets.append(np.cumsum(regret) / np.arange(1, 401))
    average = np.mean(regrets, axis=0)
    assert average[399] < average[49] < average[4]
    assert average[399] < 0.5 * average[4]


def test_state_dict_round_trip_resumes_identically():
    objective = _objective(1)
    for build in (_algorithms()["ma-osma"], _algorithms()["ma-osea"], _algorithms()["osg"]):
        first = build(0)
        for _ in range(5):
            first.act()
            first.update(objective)
        state = first.state_dict()
        second = build(99)
        second.load_state_dict(state)
        for _ in range(5):
            assert first.act() == second.act()
            first.update(objective)
            second.update(objective)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda W: MAOSMA([[0, 1], [1, 2]], W, eta=1.0), "disjoint"),
        (lambda W: MAOSMA([[0, 1], []], W, eta=1.0), r"blocks\[1\]` is empty"),
        (lambda W: MAOSMA([[0, -1], [2]], W, eta=1.0), "non-negative integers"),
        (lambda W: MAOSMA([[0, 1.5], [2]], W, eta=1.0), "non-negative integers"),
        (lambda W: MAOSMA([], W, eta=1.0), "non-empty"),
        (lambda W: MAOSMA([[0], [1]], W, eta=0.0), "eta"),
        (lambda W: MAOSMA([[0], [1]], W, eta=-1.0), "eta"),
        (lambda W: MAOSMA([[0], [1]], W, eta=1.0, curvature=0.0), "curvature"),
        (lambda W: MAOSMA([[0], [1]], W, eta=1.0, curvature=1.5), "curvature"),
        (lambda W: MAOSMA([[0], [1]], W, eta=1.0, n_samples=0), "n_samples"),
        (lambda W: MAOSMA([[0], [1]], W, eta=1.0, z_sampling="exact"), "z_sampling"),
        (lambda W: MAOSMA([[0], [1], [2]], W, eta=1.0), "shape"),
        (lambda W: MAOSMA([[0], [1]], np.array([[0.9, 0.1], [0.2, 0.8]]), eta=1.0), "symmetric"),
        (lambda W: MAOSMA([[0], [1]], np.array([[0.6, 0.6], [0.6, 0.6]]), eta=1.0), "doubly stochastic"),
        (lambda W: MAOSEA([[0], [1]], W, eta=1.0, mix=0.0), "mix"),
        (lambda W: MAOSEA([[0], [1]], W, eta=0.0), "eta"),
        (lambda W: MAOSEA([[0], [1]], W, eta=1.0, start="zero"), "start"),
        (lambda W: OSG([[0], [1]], horizon=0), "horizon"),
        (lambda W: OSG([[0], [0]], horizon=5), "disjoint"),
        (lambda W: OSG([[0], [1]], horizon=5, graph=nx.path_graph(3)), "2 nodes"),
        (lambda W: OSG([[0], [1]], horizon=5, seed=-1), "seed"),
    ],
)
def test_bad_input_fails_clearly(build, match):
    with pytest.raises(ConfigError, match=match):
        build(np.full((2, 2), 0.5))


def test_objective_too_small_for_the_blocks_and_update_before_act():
    learner = MAOSMA([[0], [5]], np.full((2, 2), 0.5), eta=1.0)
    with pytest.raises(ConfigError, match="n=3"):
        learner.update(FacilityLocation(np.ones((3, 1))))
    osg = OSG([[0], [1]], horizon=3)
    with pytest.raises(ConfigError, match="act"):
        osg.update(FacilityLocation(np.ones((2, 1))))
    with pytest.raises(TypeError, match="SubmodularObjective"):
        learner.update(lambda s: 0.0)
    with pytest.raises(TypeError, match="SubmodularObjective"):
        offline_greedy(np.ones((3, 3)), [[0], [1]])


def test_inputs_are_not_modified():
    blocks = [[0, 1], [2, 3]]
    W = np.full((2, 2), 0.5)
    learner = MAOSMA(blocks, W, eta=1.0)
    learner.update(_objective(0, n=4))
    assert blocks == [[0, 1], [2, 3]]
    np.testing.assert_array_equal(W, np.full((2, 2), 0.5))
    decisions = learner.decisions
    decisions[:] = 7.0
    assert not np.any(learner.decisions == 7.0)


def test_oracle_calls_per_round_match_the_papers_count():
    from paperpack.ma_osma import CountingObjective

    blocks = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(5)]
    W = consensus_matrix(nx.cycle_graph(5))[0]
    for learner, expected in (
        (MAOSMA(blocks, W, eta=1.0), 2 * 15),  # Alg. 1 line 11: 2|V_i| per agent
        (MAOSEA(blocks, W, eta=1.0), 2 * 15),  # Alg. 2 line 12
        (MAOSMA(blocks, W, eta=1.0, n_samples=3), 3 * 2 * 15),
        (OSG(blocks, horizon=10), 4 * 15),  # gains against A_{i-1} and the singleton normaliser
    ):
        counted = CountingObjective(_objective(0, n=15))
        learner.act()
        learner.update(counted)
        assert counted.calls == expected


def test_osea_copies_start_on_the_own_block_or_everywhere():
    blocks = [[0, 1], [2, 3, 4]]
    own = MAOSEA(blocks, np.full((2, 2), 0.5), eta=1.0).decisions
    np.testing.assert_allclose(own, [[1 / 2, 1 / 2, 0, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]])
    everywhere = MAOSEA(blocks, np.full((2, 2), 0.5), eta=1.0, start="uniform").decisions
    np.testing.assert_allclose(everywhere, [[1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3]] * 2)


def _zero_diagonal_W(n_agents):
    """(J - I) / (N - 1): doubly stochastic, symmetric, connected, and no agent keeps its own copy."""
    return (np.ones((n_agents, n_agents)) - np.eye(n_agents)) / (n_agents - 1)


def test_osea_own_start_refuses_a_zero_diagonal_instead_of_nan():
    blocks = [[2 * i, 2 * i + 1] for i in range(4)]
    with pytest.raises(ConfigError, match=r"start='own'\) needs every w_ii > 0.*agent\(s\) \[0, 1, 2, 3\]"):
        MAOSEA(blocks, _zero_diagonal_W(4), eta=1.0)
    one_silent = np.array([[0.0, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    with pytest.raises(ConfigError, match=r"agent\(s\) \[0\]:"):
        MAOSEA(blocks[:3], one_silent, eta=1.0)


@pytest.mark.parametrize(
    "build",
    [
        lambda blocks, W: MAOSEA(blocks, W, eta=50.0, start="uniform", seed=1),
        lambda blocks, W: MAOSMA(blocks, W, eta=50.0, seed=1),
    ],
)
def test_a_zero_diagonal_runs_finite_where_the_step_is_defined(build):
    blocks = [[2 * i, 2 * i + 1] for i in range(4)]
    learner = build(blocks, _zero_diagonal_W(4))
    for t in range(15):
        learner.act()
        learner.update(_objective(t, n=8))
        assert np.all(np.isfinite(learner.decisions))


def test_a_step_that_would_be_nan_raises_and_keeps_the_decisions():
    learner = MAOSEA([[0, 1], [2, 3]], np.full((2, 2), 0.5), eta=1.0)
    state = learner.state_dict()
    state["decisions"] = np.zeros((2, 4))  # a block with no mass: nothing for the entropic step to tilt
    learner.load_state_dict(state)
    with pytest.raises(FloatingPointError, match=r"non-finite decision for agent\(s\) \[0, 1\] in round 1"):
        learner.update(_objective(0, n=4))
    np.testing.assert_array_equal(learner.decisions, np.zeros((2, 4)))
    assert learner.rounds == 0


def test_w_that_does_not_mix_warns():
    from paperpack.ma_osma import NoMixingWarning, mixing_modulus

    with pytest.warns(NoMixingWarning, match=r"β = max\(\|λ_2\|, \|λ_N\|\) = 1 \(W = I"):
        MAOSMA([[0], [1], [2]], np.eye(3), eta=1.0)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # periodic: the copies swap forever
    with pytest.warns(NoMixingWarning):
        MAOSEA([[0], [1]], swap, eta=1.0, start="uniform")
    assert mixing_modulus(swap) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MAOSMA(BLOCKS, _W(), eta=1.0)
        MAOSEA([[0]], np.eye(1), eta=1.0)  # one agent: nothing to mix with, β = 0
