"""The step-size sweep behind the default η = 300 of MA-OSMA and MA-OSEA, on held-out seeds.

The demo's setting (10 agents, 15 targets, mixed target motion, 300 rounds) on seeds 100-102, which the demo
never reports, over a complete and a sparse (``er:2``) graph. Prints the mean utility per round of each step
size. The default is, for each algorithm, the smallest η whose utility averaged over the two graphs is within
0.05 of the best.

Run: ``uv run --no-sync python packages/ma-osma/benchmarks/sweep_eta.py [--start own|uniform]``
"""

from __future__ import annotations

import argparse

from paperpack.ma_osma import MAOSEA, MAOSMA, OSG, TrackingEnv, make_graph, run_experiment
from paperpack.ma_osma.experiment import ExperimentSetup

SEEDS = [100, 101, 102]
GRAPHS = {"complete": "complete", "er:2": "er:2"}
ETAS = {"MA-OSMA": [0.3, 1, 3, 10, 30, 100, 300, 1000], "MA-OSEA": [1, 10, 30, 100, 300, 1000, 3000]}


def factory(name: str, eta: float, start: str):  # type: ignore[no-untyped-def]
    def build(setup: ExperimentSetup):  # type: ignore[no-untyped-def]
        if name == "MA-OSMA":
            return MAOSMA(setup.blocks, setup.W, eta=eta, seed=setup.seed)
        return MAOSEA(setup.blocks, setup.W, eta=eta, seed=setup.seed, start=start)

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="own", help="MA-OSEA's initial copies: own or uniform")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    env = TrackingEnv(10, 15, "mixed")
    for name, etas in ETAS.items():
        print(f"\n| {name} η | " + " | ".join(f"{eta:g}" for eta in etas) + " |")
        print("| --- |" + " --- |" * len(etas))
        for label, spec in GRAPHS.items():
            graph = make_graph(spec, 10, seed=SEEDS[0])
            algorithms = {f"{eta:g}": factory(name, eta, args.start) for eta in etas}
            results = run_experiment(env, algorithms, graph, args.rounds, SEEDS)
            means = results.utility.mean(axis=(1, 2))
            print(f"| utility, {label} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    print()
    for label, spec in GRAPHS.items():
        osg = {"OSG": lambda s: OSG(s.blocks, horizon=s.rounds, seed=s.seed)}
        if label != "complete":
            osg["OSG (neighbours)"] = lambda s: OSG(s.blocks, horizon=s.rounds, graph=s.graph, seed=s.seed)
        results = run_experiment(env, osg, make_graph(spec, 10, seed=SEEDS[0]), args.rounds, SEEDS)
        for name, mean in zip(osg, results.utility.mean(axis=(1, 2)), strict=True):
            print(f"{name} on {label}: {mean:.2f}")


if __name__ == "__main__":
    main()
