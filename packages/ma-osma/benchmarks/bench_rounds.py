"""Rounds per second and oracle calls per round of MA-OSMA, MA-OSEA and OSG on the tracking objective.

Run: ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 uv run --no-sync python
packages/ma-osma/benchmarks/bench_rounds.py [--quick]``
(on a small shared machine a multi-threaded BLAS spins on the dense ``W @ X`` of complete graphs). Times are
process CPU times (``time.process_time``), which a busy shared machine distorts far less than wall time.

Five measurements, each side by side in one run; rounds / s are measured with the algorithms in lockstep
(see :func:`rounds_per_second`).

1. algorithm only (``act`` + ``update`` on pre-generated tracking objectives), batched oracle (one
   ``marginal_gains`` call answers every agent) against the same algorithm whose oracle is queried agent by
   agent (the unbatched baseline);
2. oracle calls per round, counted by :class:`CountingObjective`, against the paper's ``2 |V_i|`` per agent;
3. the step alone (consensus, then projection or KL step; gradient given), the part in which MA-OSEA saves
   the projection, and the probability mass of the agents' copies, which sets the size of the sampled sets
   ``R`` and so the oracle's cost;
4. MA-OSMA against MA-OSEA at 100 agents as the rounds go on: both algorithms' copies start with mass on the
   agent's own block only and fill in through the consensus, so the sampled sets ``R`` (and the oracle's
   cost) grow for hundreds of rounds; section 1 at 100 agents only sees the first 100 rounds;
5. the full simulation (environment, algorithm and the offline-greedy comparator) at 20 agents, 30 targets and
   1250 rounds, the issue's "under a minute" target.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import networkx as nx
import numpy as np

from paperpack.ma_osma import (
    MAOSEA,
    MAOSMA,
    OSG,
    CountingObjective,
    TrackingEnv,
    TrackingObjective,
    consensus_matrix,
    default_algorithms,
    make_graph,
    run_experiment,
)


class RowByRow:
    """The unbatched baseline: every agent queries the oracle on its own (one call per row)."""

    def __init__(self, objective: TrackingObjective) -> None:
        self.objective = objective
        self.n = objective.n

    def value(self, selection):
        return self.objective.value(selection)

    def values(self, masks):
        return np.concatenate([self.objective.values(masks[b : b + 1]) for b in range(masks.shape[0])])

    def marginal_gains(self, masks, candidates):
        return np.concatenate(
            [
                self.objective.marginal_gains(masks[b : b + 1], candidates[b : b + 1])
                for b in range(masks.shape[0])
            ]
        )


def objectives(n_agents: int, n_targets: int, count: int) -> list[TrackingObjective]:
    env = TrackingEnv(n_agents, n_targets)
    env.reset(0)
    rng = np.random.default_rng(0)
    found = []
    for _ in range(count):
        found.append(env.step([block[int(rng.integers(len(block)))] for block in env.blocks]).objective)
    return found


def builders(n_agents: int, rounds: int):
    env = TrackingEnv(n_agents, 1)
    W, _ = consensus_matrix(make_graph("er:4", n_agents, seed=0))
    return {
        "MA-OSMA": lambda: MAOSMA(env.blocks, W, eta=300.0, seed=0),
        "MA-OSEA": lambda: MAOSEA(env.blocks, W, eta=300.0, seed=0),
        "OSG": lambda: OSG(env.blocks, horizon=rounds, seed=0),
    }


def step_seconds(build, pool, rounds: int) -> tuple[float, float]:
    """Mean seconds of consensus + block step after ``rounds`` warm-up rounds, and the copies' mean mass."""
    algorithm = build()
    for t in range(rounds):
        algorithm.act()
        algorithm.update(pool[t % len(pool)])
    rng = np.random.default_rng(0)
    rows = np.arange(algorithm.partition.n_agents)[:, None]
    gradient = rng.random(algorithm.partition.padded.shape)
    repeats = 200
    started = time.process_time()
    for _ in range(repeats):
        mixed = np.asarray(algorithm._mixing @ algorithm._X)
        algorithm._block_step(mixed[rows, algorithm.partition.padded], gradient)
    return (time.process_time() - started) / repeats, float(algorithm.decisions.sum(axis=1).mean())


def rounds_per_second(builds: dict, pool, windows: tuple[int, ...], wrap=None) -> list[dict[str, float]]:
    """Rounds / s of each algorithm within each window of rounds, the algorithms run in lockstep.

    Round ``t`` of every algorithm runs before round ``t + 1`` of any, in an order that alternates between
    rounds, and each algorithm's rounds are timed on their own: the ratios between algorithms see the same
    machine load, which drifts on a shared machine.
    """
    algorithms = {name: build() for name, build in builds.items()}
    rates, done = [], 0
    for end in windows:
        spent = dict.fromkeys(algorithms, 0.0)
        for t in range(done, end):
            objective = pool[t % len(pool)] if wrap is None else wrap(pool[t % len(pool)])
            for name in list(algorithms)[:: 1 if t % 2 == 0 else -1]:
                started = time.process_time()
                algorithms[name].act()
                algorithms[name].update(objective)
                spent[name] += time.process_time() - started
        rates.append({name: (end - done) / seconds for name, seconds in spent.items()})
        done = end
    return rates


def oracle_calls(build, pool) -> float:
    algorithm = build()
    counted = CountingObjective(pool[0])
    algorithm.act()
    algorithm.update(counted)
    return counted.calls


def filling_in(windows: tuple[int, ...]) -> None:
    """Section 4: rounds / s of MA-OSMA and MA-OSEA at 100 agents within successive windows of rounds."""
    print("\n4. 100 agents x 150 targets as the copies fill in: rounds / s within each window of rounds")
    print(f"{'rounds':>10} {'MA-OSMA':>9} {'MA-OSEA':>9} {'MA-OSEA / MA-OSMA':>18}")
    builds = {name: build for name, build in builders(100, windows[-1]).items() if name != "OSG"}
    starts = (0, *windows[:-1])
    rates = rounds_per_second(builds, objectives(100, 150, 100), windows)
    for start, end, rate in zip(starts, windows, rates, strict=True):
        ratio = rate["MA-OSEA"] / rate["MA-OSMA"]
        print(f"{start + 1:>4}-{end:<5} {rate['MA-OSMA']:>9.1f} {rate['MA-OSEA']:>9.1f} {ratio:>18.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    threads = " ".join(
        f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; numpy {np.__version__}; {threads}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    settings = [
        (20, 30, 300 if args.quick else 1250, 100 if args.quick else 300),
        (100, 150, 20 if args.quick else 100, 10 if args.quick else 30),
    ]
    print("\n1. algorithm only: rounds / s (batched oracle vs agent-by-agent oracle)")
    print(f"{'N x M':>9} {'algorithm':>9} {'batched':>9} {'by agent':>9} {'speed-up':>9}")
    speeds: dict[tuple[int, str], float] = {}
    for n_agents, n_targets, rounds, looped_rounds in settings:
        pool = objectives(n_agents, n_targets, min(rounds, 100))
        builds = builders(n_agents, rounds)
        (fast,) = rounds_per_second(builds, pool, (rounds,))
        (slow,) = rounds_per_second(builds, pool, (looped_rounds,), wrap=RowByRow)
        for name in builds:
            speeds[(n_agents, name)] = fast[name]
            print(
                f"{n_agents:>4} x {n_targets:<3} {name:>9} {fast[name]:>9.1f} {slow[name]:>9.1f} "
                f"{fast[name] / slow[name]:>8.1f}x"
            )
        ratio = speeds[(n_agents, "MA-OSEA")] / speeds[(n_agents, "MA-OSMA")]
        print(f"{'':>9} MA-OSEA / MA-OSMA speed: {ratio:.2f}")

    print("\n2. oracle calls per round (one call = one evaluation of f, as the paper counts)")
    print(f"{'N x M':>9} {'algorithm':>9} {'counted':>9} {'paper 2 N |V_i|':>16} {'ratio':>6}")
    for n_agents, n_targets, rounds, _ in settings:
        pool = objectives(n_agents, n_targets, 1)
        paper = 2 * n_agents * 9
        for name, build in builders(n_agents, rounds).items():
            calls = oracle_calls(build, pool)
            print(
                f"{n_agents:>4} x {n_targets:<3} {name:>9} {calls:>9.0f} {paper:>16d} {calls / paper:>6.2f}"
            )

    print("\n3. consensus + block step only (gradient given), after the warm-up rounds of section 1")
    print(f"{'N x M':>9} {'algorithm':>9} {'step ms':>9} {'mass of x_i':>12}")
    for n_agents, n_targets, rounds, _ in settings:
        pool = objectives(n_agents, n_targets, min(rounds, 100))
        for name, build in builders(n_agents, rounds).items():
            if name == "OSG":
                continue
            seconds, mass = step_seconds(build, pool, rounds)
            print(f"{n_agents:>4} x {n_targets:<3} {name:>9} {1e3 * seconds:>9.3f} {mass:>12.1f}")

    filling_in((50, 150, 300) if args.quick else (100, 300, 600, 1000))

    rounds = 300 if args.quick else 1250
    print(f"\n5. full simulation, 20 agents x 30 targets x {rounds} rounds, er:4 graph, 1 seed (CPU s)")
    env = TrackingEnv(20, 30)
    graph = make_graph("er:4", 20, seed=0)
    for name, factory in default_algorithms().items():
        started = time.process_time()
        run_experiment(env, {name: factory}, graph, rounds, [0])
        print(f"{name:>17}: {time.process_time() - started:6.1f} s (comparator included)")
    started = time.process_time()
    run_experiment(env, {"MA-OSMA": default_algorithms()["MA-OSMA"]}, nx.complete_graph(20), rounds, [0])
    print(f"{'MA-OSMA, complete':>17}: {time.process_time() - started:6.1f} s (comparator included)")


if __name__ == "__main__":
    main()
