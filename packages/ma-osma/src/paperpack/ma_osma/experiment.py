"""Run algorithms on the tracking simulation; measure utility, regret against offline greedy and coverage."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray
from tqdm.auto import tqdm

from paperpack.core.errors import ConfigError
from paperpack.core.files import atomic_path
from paperpack.core.validation import check_int
from paperpack.ma_osma.config import AlgorithmConfig
from paperpack.ma_osma.consensus import adjacency_matrix, consensus_matrix
from paperpack.ma_osma.greedy import offline_greedy
from paperpack.ma_osma.maosma import MAOSEA, MAOSMA
from paperpack.ma_osma.objectives import SubmodularObjective
from paperpack.ma_osma.osg import OSG
from paperpack.ma_osma.partition import Partition
from paperpack.ma_osma.tracking import TrackingEnv

__all__ = [
    "AlgorithmFactory",
    "ExperimentResults",
    "ExperimentSetup",
    "OnlineAlgorithm",
    "default_algorithms",
    "run_experiment",
]

logger = logging.getLogger(__name__)


class OnlineAlgorithm(Protocol):
    """What :func:`run_experiment` drives: ``act`` then ``update`` once per round."""

    def act(self) -> list[int]:
        """One ground-set index per agent, in agent order."""
        ...

    def update(self, objective: SubmodularObjective) -> None:
        """Learn from the revealed ``f_t``."""
        ...


@dataclass(frozen=True)
class ExperimentSetup:
    """What an algorithm factory receives for one run.

    Attributes:
        blocks: the agents' action sets.
        W: the Metropolis-Hastings consensus matrix of ``graph``.
        beta: its second-largest eigenvalue modulus.
        graph: the communication graph as a symmetric boolean adjacency.
        rounds: ``T``.
        seed: the run's seed (the environment and the algorithm both use it).
    """

    blocks: list[list[int]]
    W: NDArray[np.float64]
    beta: float
    graph: NDArray[np.bool_]
    rounds: int
    seed: int


AlgorithmFactory = Callable[[ExperimentSetup], OnlineAlgorithm]


def default_algorithms(config: AlgorithmConfig | None = None) -> dict[str, AlgorithmFactory]:
    """The four algorithms of the paper's comparison, ready for :func:`run_experiment`.

    ``MA-OSMA`` and ``MA-OSEA`` communicate over the experiment's graph; ``OSG`` has the complete
    information of its public code; ``OSG (neighbours)`` sees only the predecessors that are graph
    neighbours. The step sizes and the estimator come from ``config`` (``AlgorithmConfig()`` when None: the
    defaults are ours, the paper gives none; the smallest values on the plateau of a sweep on held-out seeds,
    see the docs).

    Examples:
        >>> sorted(default_algorithms())
        ['MA-OSEA', 'MA-OSMA', 'OSG', 'OSG (neighbours)']
    """
    settings = AlgorithmConfig() if config is None else config
    eta, eta_osea, mix = settings.eta, settings.eta_osea, settings.mix
    curvature, n_samples = settings.curvature, settings.n_samples

    def maosma(setup: ExperimentSetup) -> OnlineAlgorithm:
        return MAOSMA(
            setup.blocks, setup.W, eta=eta, curvature=curvature, n_samples=n_samples, seed=setup.seed
        )

    def maosea(setup: ExperimentSetup) -> OnlineAlgorithm:
        return MAOSEA(
            setup.blocks,
            setup.W,
            eta=eta_osea,
            mix=mix,
            curvature=curvature,
            n_samples=n_samples,
            seed=setup.seed,
        )

    def osg(setup: ExperimentSetup) -> OnlineAlgorithm:
        return OSG(setup.blocks, horizon=setup.rounds, seed=setup.seed)

    def osg_neighbours(setup: ExperimentSetup) -> OnlineAlgorithm:
        return OSG(setup.blocks, horizon=setup.rounds, graph=setup.graph, seed=setup.seed)

    return {"MA-OSMA": maosma, "MA-OSEA": maosea, "OSG": osg, "OSG (neighbours)": osg_neighbours}


@dataclass
class ExperimentResults:
    """Per-round measurements, arrays indexed ``[algorithm, seed, round]``.

    Attributes:
        algorithms: names, in the order of the first axis.
        seeds: the seeds, in the order of the second axis.
        utility: ``f_t(S_t)`` of each algorithm's actions.
        greedy_utility: ``f_t(greedy_t)``, the offline greedy comparator on the same ``f_t``.
        covered: targets covered after each round.
        metadata: free-form description of the run (graph, sizes, ...).
    """

    algorithms: list[str]
    seeds: list[int]
    utility: NDArray[np.float64]
    greedy_utility: NDArray[np.float64]
    covered: NDArray[np.float64]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def regret(self) -> NDArray[np.float64]:
        """Per-round regret ``f_t(greedy_t) - f_t(S_t)`` (negative when the algorithm beats greedy)."""
        return self.greedy_utility - self.utility

    @property
    def cumulative_regret(self) -> NDArray[np.float64]:
        """``Σ_{s≤t} regret_s``."""
        return np.cumsum(self.regret, axis=-1)

    @property
    def average_regret(self) -> NDArray[np.float64]:
        """``(1/t) Σ_{s≤t} regret_s``."""
        return self.cumulative_regret / np.arange(1, self.utility.shape[-1] + 1)

    def summary(self) -> list[dict[str, float | str]]:
        """One row per algorithm: means over seeds and rounds, with the standard error over seeds."""
        rows: list[dict[str, float | str]] = []
        n_seeds = len(self.seeds)
        for index, name in enumerate(self.algorithms):
            per_seed = self.utility[index].mean(axis=1)
            final_regret = self.average_regret[index, :, -1]
            rows.append(
                {
                    "algorithm": name,
                    "mean_utility": float(per_seed.mean()),
                    "mean_utility_se": float(per_seed.std(ddof=1) / np.sqrt(n_seeds)) if n_seeds > 1 else 0.0,
                    "average_regret": float(final_regret.mean()),
                    "average_regret_se": float(final_regret.std(ddof=1) / np.sqrt(n_seeds))
                    if n_seeds > 1
                    else 0.0,
                    "greedy_utility": float(self.greedy_utility[index].mean()),
                    "targets_covered": float(self.covered[index].mean()),
                }
            )
        return rows

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the summary and the seed-averaged curves as JSON, atomically (temporary file, rename)."""
        target = Path(path)
        payload = {
            "metadata": self.metadata,
            "seeds": self.seeds,
            "summary": self.summary(),
            "curves": {
                name: {
                    "utility": self.utility[i].mean(axis=0).tolist(),
                    "average_regret": self.average_regret[i].mean(axis=0).tolist(),
                    "covered": self.covered[i].mean(axis=0).tolist(),
                }
                for i, name in enumerate(self.algorithms)
            },
        }
        with atomic_path(target) as temporary:
            temporary.write_text(json.dumps(payload, indent=1))
        return target


def _check_memory(n_algorithms: int, n_seeds: int, rounds: int) -> None:
    """Refuse a run whose per-round measurements (three float64 arrays) would not fit in memory."""
    needed = 3 * 8 * n_algorithms * n_seeds * rounds
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if available is not None and needed > available // 2:
        raise ConfigError(
            f"`rounds` must leave the per-round results in memory: {rounds} rounds x {n_seeds} seeds x "
            f"{n_algorithms} algorithms need {needed / 2**30:.3g} GiB, more than half of this machine's "
            f"{available / 2**30:.3g} GiB; got {rounds}"
        )


def run_experiment(
    env: TrackingEnv,
    algorithms: Mapping[str, AlgorithmFactory],
    graph: nx.Graph | ArrayLike,
    rounds: int,
    seeds: Sequence[int],
    *,
    progress: bool = False,
) -> ExperimentResults:
    """Play every algorithm for ``rounds`` rounds on ``env`` for every seed.

    For each seed and algorithm the environment is reset with that seed (so the non-reactive targets follow
    the same paths for every algorithm) and the algorithm is built by its factory. Each round: ``act``,
    ``env.step``, ``update``; the offline greedy comparator is evaluated on the same ``f_t``.

    Args:
        env: the tracking simulation.
        algorithms: name -> factory (see :func:`default_algorithms`).
        graph: the agents' communication graph (connected).
        rounds: ``T``.
        seeds: one run per seed.
        progress: show a tqdm bar over the runs.

    Returns:
        The per-round measurements.

    Examples:
        >>> import networkx as nx
        >>> env = TrackingEnv(4, 5)
        >>> results = run_experiment(env, default_algorithms(), nx.cycle_graph(4), rounds=5, seeds=[0])
        >>> results.utility.shape
        (4, 1, 5)
    """
    check_int("rounds", rounds, minimum=1)
    seed_list = [int(s) for s in seeds]
    _check_memory(len(algorithms), len(seed_list), rounds)
    if not seed_list:
        raise ConfigError("`seeds` must hold at least one seed, got none")
    if not algorithms:
        raise ConfigError("`algorithms` must name at least one algorithm, got none")
    W, beta = consensus_matrix(graph)
    adjacency = adjacency_matrix(graph)
    if adjacency.shape[0] != env.n_agents:
        raise ConfigError(f"`graph` must have {env.n_agents} nodes (one per agent), got {adjacency.shape[0]}")
    partition = Partition(env.blocks)
    shape = (len(algorithms), len(seed_list), rounds)
    utility, best, covered = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    runs = [(s, a) for s in range(len(seed_list)) for a in range(len(algorithms))]
    factories = list(algorithms.values())
    for s, a in tqdm(runs, desc="ma-osma runs", disable=not progress, leave=False):
        seed = seed_list[s]
        env.reset(seed)
        setup = ExperimentSetup(env.blocks, W, beta, adjacency, rounds, seed)
        algorithm = factories[a](setup)
        for t in range(rounds):
            step = env.step(algorithm.act())
            algorithm.update(step.objective)
            utility[a, s, t] = step.utility
            covered[a, s, t] = step.covered
            best[a, s, t] = step.objective.value(offline_greedy(step.objective, partition))
        logger.info("%s seed %d: mean utility %.4f", list(algorithms)[a], seed, utility[a, s].mean())
    metadata = {
        "n_agents": env.n_agents,
        "n_targets": env.n_targets,
        "motion": env.motion,
        "rounds": rounds,
        "beta": beta,
        "edges": int(adjacency.sum() // 2),
    }
    return ExperimentResults(list(algorithms), seed_list, utility, best, covered, metadata)
