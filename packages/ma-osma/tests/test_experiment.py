import json

import networkx as nx
import numpy as np
import pytest

from paperpack.core.errors import ConfigError
from paperpack.core.testing.contracts import assert_no_partial_output
from paperpack.ma_osma import ExperimentResults, TrackingEnv, default_algorithms, plot_results, run_experiment
from paperpack.ma_osma.config import SimulationConfig


@pytest.fixture(scope="module")
def results():
    env = TrackingEnv(4, 5)
    return run_experiment(env, default_algorithms(), nx.cycle_graph(4), rounds=12, seeds=[0, 1])


def test_results_shapes_and_regret_definitions(results):
    assert results.algorithms == ["MA-OSMA", "MA-OSEA", "OSG", "OSG (neighbours)"]
    assert results.utility.shape == results.greedy_utility.shape == results.covered.shape == (4, 2, 12)
    np.testing.assert_allclose(results.regret, results.greedy_utility - results.utility)
    np.testing.assert_allclose(results.cumulative_regret[..., -1], results.regret.sum(axis=-1))
    np.testing.assert_allclose(results.average_regret[..., 3], results.regret[..., :4].mean(axis=-1))
    assert np.all(results.covered <= 5)
    summary = results.summary()
    assert summary[0]["mean_utility"] == pytest.approx(results.utility[0].mean())


def test_runs_are_reproducible(results):
    again = run_experiment(
        TrackingEnv(4, 5), default_algorithms(), nx.cycle_graph(4), rounds=12, seeds=[0, 1]
    )
    np.testing.assert_array_equal(again.utility, results.utility)


def test_save_json_and_plots(results, tmp_path):
    path = results.save_json(tmp_path / "out" / "results.json")
    payload = json.loads(path.read_text())
    assert payload["summary"][2]["algorithm"] == "OSG"
    assert len(payload["curves"]["MA-OSMA"]["utility"]) == 12
    plots = plot_results(results, tmp_path / "plots", title="ring", smooth=3)
    assert [p.name for p in plots] == ["utility.png", "average_regret.png", "targets_covered.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in plots)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    broken = ExperimentResults(
        ["x"], [0], np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), metadata={"bad": object()}
    )
    with pytest.raises(TypeError):
        broken.save_json(tmp_path / "results.json")
    assert_no_partial_output(tmp_path / "results.json")


def test_bad_experiment_arguments():
    env = TrackingEnv(3, 2)
    with pytest.raises(ConfigError, match="3 nodes"):
        run_experiment(env, default_algorithms(), nx.cycle_graph(4), rounds=2, seeds=[0])
    with pytest.raises(ConfigError, match="connected"):
        run_experiment(env, default_algorithms(), nx.Graph([(0, 1), (2, 2)]), rounds=2, seeds=[0])
    with pytest.raises(ConfigError, match="rounds"):
        run_experiment(env, default_algorithms(), nx.cycle_graph(3), rounds=0, seeds=[0])
    with pytest.raises(ConfigError, match="seeds"):
        run_experiment(env, default_algorithms(), nx.cycle_graph(3), rounds=2, seeds=[])
    with pytest.raises(ConfigError, match="algorithms"):
        run_experiment(env, {}, nx.cycle_graph(3), rounds=2, seeds=[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agents": 0}, "agents"),
        ({"eta": -1.0}, "eta"),
        ({"curvature": 1.5}, "curvature"),
        ({"mix": 0.0}, "mix"),
        ({"motion": "zigzag"}, "motion"),
        ({"algorithms": ["osg", "greedy"]}, "algorithms"),
        ({"algorithms": ["osg", "osg"]}, "repeat"),
        ({"algorithms": []}, "algorithms"),
    ],
)
def test_simulation_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SimulationConfig(**kwargs)


def test_simulation_config_parses_with_hf_argument_parser():
    transformers = pytest.importorskip("transformers")
    parser = transformers.HfArgumentParser(SimulationConfig)
    (config,) = parser.parse_args_into_dataclasses(["--agents", "7", "--algorithms", "ma-osma", "osg"])
    assert config.agents == 7
    assert config.algorithms == ["ma-osma", "osg"]
