"""The ``paperpack ma-osma`` command.

``paperpack ma-osma simulate --agents 20 --targets 30 --rounds 1250 --graph er:4 --output DIR`` runs the
multi-target tracking comparison and writes ``results.json`` and the PNG plots into ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from paperpack.ma_osma.config import SimulationConfig

__all__ = ["configure_parser"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` subcommand, one option per :class:`SimulationConfig` field."""
    subcommands = parser.add_subparsers(dest="ma_osma_command", metavar="SUBCOMMAND", required=True)
    simulate = subcommands.add_parser(
        "simulate",
        help="run MA-OSMA, MA-OSEA and OSG on the multi-target tracking simulation",
        description="Run the tracking comparison over several seeds; write results.json and PNG plots.",
    )
    hints = typing.get_type_hints(SimulationConfig)
    for item in dataclasses.fields(SimulationConfig):
        option = "--" + item.name.replace("_", "-")
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        help_text = f"{item.metadata['help']} (default: {default})"
        if hints[item.name] == list[str]:
            simulate.add_argument(option, dest=item.name, nargs="+", default=default, help=help_text)
        else:
            simulate.add_argument(
                option, dest=item.name, type=hints[item.name], default=default, help=help_text
            )
    simulate.add_argument("--output", required=True, help="folder for results.json and the plots")
    simulate.add_argument("--progress", action="store_true", help="show a progress bar over the runs")
    simulate.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from paperpack.ma_osma.config import ALGORITHMS
    from paperpack.ma_osma.consensus import make_graph
    from paperpack.ma_osma.experiment import default_algorithms, run_experiment
    from paperpack.ma_osma.plotting import plot_results
    from paperpack.ma_osma.tracking import TrackingEnv

    config = SimulationConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimulationConfig)})
    output = Path(args.output)
    env = TrackingEnv(config.agents, config.targets, config.motion)
    graph = make_graph(config.graph, config.agents, seed=config.seed)
    factories = default_algorithms(
        eta=config.eta,
        eta_osea=config.eta_osea,
        mix=config.mix,
        curvature=config.curvature,
        n_samples=config.n_samples,
    )
    chosen = {ALGORITHMS[name]: factories[ALGORITHMS[name]] for name in config.algorithms}
    seeds = list(range(config.seed, config.seed + config.seeds))
    results = run_experiment(env, chosen, graph, config.rounds, seeds, progress=args.progress)
    results.metadata.update({"config": dataclasses.asdict(config)})
    results.save_json(output / "results.json")
    plots = plot_results(results, output, title=f"{config.graph}, N={config.agents}, M={config.targets}")
    header = f"{'algorithm':<18} {'mean utility':>14} {'avg regret':>12} {'covered':>9}"
    lines = [header, "-" * len(header)]
    for row in results.summary():
        lines.append(
            f"{row['algorithm']!s:<18} {row['mean_utility']:>14.4f} {row['average_regret']:>12.4f} "
            f"{row['targets_covered']:>9.2f}"
        )
    print("\n".join(lines))
    print(f"\nWrote {output / 'results.json'} and {', '.join(p.name for p in plots)}")
    return 0
