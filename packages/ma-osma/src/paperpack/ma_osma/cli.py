"""The ``paperpack ma-osma`` command.

``paperpack ma-osma simulate --agents 20 --targets 30 --rounds 1250 --graph er:4 --output DIR`` runs the
multi-target tracking comparison and writes ``results.json`` and the PNG plots into ``DIR``: a new or empty
folder, or an earlier output of this command with ``--overwrite``. The flags are ``SimulationConfig``'s fields
(one flag each, the defaults in one place: the config) and paperpack's shared ``--output``, ``--overwrite``,
``--progress`` and ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses

from paperpack.core.arguments import add_config_arguments, config_overrides
from paperpack.core.commands import add_shared_arguments

__all__ = ["SIMULATE_COMMAND", "configure_parser"]

#: The command name recorded in the output's marker.
SIMULATE_COMMAND = "ma-osma simulate"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` subcommand, one option per :class:`SimulationConfig` field."""
    from paperpack.ma_osma.config import SimulationConfig

    subcommands = parser.add_subparsers(dest="ma_osma_command", metavar="SUBCOMMAND")
    simulate = subcommands.add_parser(
        "simulate",
        help="run MA-OSMA, MA-OSEA and OSG on the multi-target tracking simulation",
        description="Run the tracking comparison over several seeds; write results.json and PNG plots.",
    )
    names = add_config_arguments(simulate, SimulationConfig)
    add_shared_arguments(
        simulate,
        "output",
        "overwrite",
        "progress",
        "config",
        required=("output",),
        help={
            "output": "the folder for results.json and the plots: a new or empty one, or an earlier output "
            "of this command with --overwrite"
        },
    )
    simulate.set_defaults(handler=_simulate, config_fields=names)


def _simulate(args: argparse.Namespace) -> int:
    from paperpack.core.files import atomic_folder, check_output
    from paperpack.ma_osma.config import ALGORITHMS, SimulationConfig
    from paperpack.ma_osma.consensus import make_graph
    from paperpack.ma_osma.experiment import default_algorithms, run_experiment
    from paperpack.ma_osma.plotting import plot_results
    from paperpack.ma_osma.tracking import TrackingEnv

    config = SimulationConfig(**config_overrides(args, args.config_fields))
    output = check_output(args.output, command=SIMULATE_COMMAND, overwrite=args.overwrite)
    env = TrackingEnv(config.agents, config.targets, config.motion)
    graph = make_graph(config.graph, config.agents, seed=config.seed)
    factories = default_algorithms(config)
    chosen = {ALGORITHMS[name]: factories[ALGORITHMS[name]] for name in config.algorithms}
    seeds = list(range(config.seed, config.seed + config.seeds))
    results = run_experiment(env, chosen, graph, config.rounds, seeds, progress=args.progress)
    results.metadata.update({"config": dataclasses.asdict(config)})
    with atomic_folder(output, command=SIMULATE_COMMAND, overwrite=args.overwrite) as staging:
        results.save_json(staging / "results.json")
        plots = plot_results(results, staging, title=f"{config.graph}, N={config.agents}, M={config.targets}")
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
