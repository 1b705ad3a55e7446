import itertools

import networkx as nx
import numpy as np
import pytest

from paperpack.core.errors import ConfigError
from paperpack.ma_osma import MAOSMA, WeightedCoverage, adjacency_matrix, consensus_matrix, make_graph
from paperpack.ma_osma._reference import metropolis_hastings


def _connected_graphs():
    graphs = [
        nx.complete_graph(5),
        nx.cycle_graph(7),
        nx.path_graph(6),
        nx.star_graph(5),
        nx.complete_graph(1),
    ]
    graphs += [make_graph("er:3", 12, seed=seed) for seed in range(5)]
    return graphs


@pytest.mark.parametrize(
    "graph", _connected_graphs(), ids=lambda g: f"{g.number_of_nodes()}n{g.number_of_edges()}e"
)
def test_weights_are_symmetric_doubly_stochastic_and_contracting(graph):
    W, beta = consensus_matrix(graph)
    adjacency = adjacency_matrix(graph)
    np.testing.assert_allclose(W, metropolis_hastings(adjacency), atol=1e-14)
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(W.sum(axis=0), 1.0)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert np.all(W >= 0)
    assert np.all(W[~adjacency & ~np.eye(len(W), dtype=bool)] == 0)
    assert 0.0 <= beta < 1.0
    eigenvalues = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    assert beta == pytest.approx(eigenvalues[1] if len(W) > 1 else 0.0, abs=1e-12)


def test_adjacency_array_and_graph_agree():
    graph = nx.cycle_graph(5)
    W_graph, beta_graph = consensus_matrix(graph)
    W_array, beta_array = consensus_matrix(nx.to_numpy_array(graph))
    np.testing.assert_allclose(W_graph, W_array)
    assert beta_graph == pytest.approx(beta_array)


def test_sparser_graphs_mix_slower():
    _, ring = consensus_matrix(nx.cycle_graph(10))
    _, complete = consensus_matrix(nx.complete_graph(10))
    assert complete < 1e-12 < ring < 1.0


@pytest.mark.parametrize(
    ("graph", "match"),
    [
        (nx.Graph([(0, 1), (2, 3)]), "connected"),
        (np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]]), "connected"),
        (np.array([[0, 1], [0, 0]]), "symmetric"),
        (np.ones((2, 3)), "square"),
        (-np.ones((2, 2)), "non-negative"),
        (nx.DiGraph([(0, 1)]), "undirected"),
        (nx.Graph(), "at least one node"),
    ],
)
def test_bad_graphs_fail_clearly(graph, match):
    with pytest.raises(ConfigError, match=match):
        consensus_matrix(graph)


def test_consensus_error_vanishes_without_gradient_steps():
    # Agents first learn different things on their own blocks; then the objective offers no gain at all, so
    # the update is pure averaging X <- W X and the disagreement must shrink like beta^t.
    graph = nx.cycle_graph(6)
    W, beta = consensus_matrix(graph)
    blocks = [[2 * i, 2 * i + 1] for i in range(6)]
    learner = MAOSMA(blocks, W, eta=0.5, seed=0)
    signal = WeightedCoverage(np.eye(12, dtype=bool), np.arange(1.0, 13.0))
    for _ in range(5):
        learner.update(signal)
    silent = WeightedCoverage(np.eye(12, dtype=bool), np.zeros(12))

    def disagreement(X):
        return float(np.linalg.norm(X - X.mean(axis=0)))

    errors = [disagreement(learner.decisions)]
    for _ in range(60):
        learner.update(silent)
        errors.append(disagreement(learner.decisions))
    assert errors[0] > 0.1
    assert errors[-1] < 1e-3 * errors[0]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(errors))
    assert errors[-1] <= errors[0] * beta**60 * 1.0001
    # Averaging keeps the mean decision: what was learnt is spread, not lost.
    np.testing.assert_allclose(learner.decisions.mean(axis=0), learner.decisions[0], atol=1e-3)


@pytest.mark.parametrize(("spec", "edges"), [("complete", 45), ("ring", 10), ("path", 9), ("star", 9)])
def test_make_graph_specs(spec, edges):
    assert make_graph(spec, 10).number_of_edges() == edges


def test_make_graph_er_is_connected_seeded_and_about_the_degree():
    graphs = [make_graph("er:4", 20, seed=s) for s in range(10)]
    assert all(nx.is_connected(g) for g in graphs)
    assert nx.utils.graphs_equal(make_graph("er:4", 20, seed=3), graphs[3])
    mean_degree = np.mean([2 * g.number_of_edges() / 20 for g in graphs])
    assert 3.0 < mean_degree < 5.5


@pytest.mark.parametrize("spec", ["erdos", "er", "er:x", "er:0", "er:50", "complete:3"])
def test_make_graph_rejects_bad_specs(spec):
    with pytest.raises(ConfigError, match="graph"):
        make_graph(spec, 10)
