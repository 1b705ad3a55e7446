"""The ``paperpack demo`` entry: MA-OSMA / MA-OSEA against OSG on a small multi-target tracking run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.ma_osma.consensus import make_graph
from paperpack.ma_osma.experiment import ExperimentResults, default_algorithms, run_experiment
from paperpack.ma_osma.plotting import plot_results
from paperpack.ma_osma.tracking import TrackingEnv

if TYPE_CHECKING:
    from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable

__all__ = ["run_demo"]

N_AGENTS = 10
N_TARGETS = 15
GRAPHS = {"complete": "complete", "sparse": "er:2"}


def _table(label: str, results: ExperimentResults) -> DemoTable:
    from paperpack.core.demo import DemoTable

    rows: list[list[str | float | int]] = [
        [
            str(row["algorithm"]),
            f"{row['mean_utility']:.3f} ± {row['mean_utility_se']:.3f}",
            f"{row['average_regret']:.3f} ± {row['average_regret_se']:.3f}",
            round(float(row["targets_covered"]), 2),
        ]
        for row in results.summary()
    ]
    beta = results.metadata["beta"]
    return DemoTable(
        title=f"{label} graph ({GRAPHS[label]}, β = {beta:.3f}), N = {N_AGENTS}, M = {N_TARGETS}",
        columns=["algorithm", "mean utility ± s.e.", "average regret at T ± s.e.", "targets covered"],
        rows=rows,
    )


def _claims(label: str, results: ExperimentResults, metric: str) -> list[Claim]:
    from paperpack.core.demo import Claim

    utility = {str(row["algorithm"]): float(row["mean_utility"]) for row in results.summary()}
    baseline = "OSG (neighbours)" if label == "sparse" else "OSG"
    claims = []
    for method in ("MA-OSMA", "MA-OSEA"):
        held: bool | None = utility[method] > utility[baseline] if label == "sparse" else None
        claims.append(
            Claim(
                claim=f"{method}'s utility > {baseline}'s on the {label} graph",
                method=method,
                baselines=baseline,
                metric=metric,
                method_value=utility[method],
                baseline_value=utility[baseline],
                held=held,
                note="" if held is not None else "complete-information OSG may match: reported, not asserted",
            )
        )
    return claims


def run_demo(ctx: DemoContext) -> DemoReport:
    """Run the four algorithms on a complete and a sparse Erdős-Rényi graph; report utility and regret."""
    from paperpack.core.demo import DemoReport

    rounds = ctx.pick(quick=150, full=300)
    seeds = ctx.seeds(quick=3, full=5)
    metric = f"mean utility per round, {len(seeds)} seeds, T = {rounds}"
    env = TrackingEnv(N_AGENTS, N_TARGETS, "mixed")
    claims, tables, plots = [], [], []
    for label in ctx.progress(GRAPHS, desc="graphs", total=len(GRAPHS)):
        graph = make_graph(GRAPHS[label], N_AGENTS, seed=ctx.seed)
        results = run_experiment(env, default_algorithms(), graph, rounds, seeds)
        tables.append(_table(label, results))
        claims += _claims(label, results, metric)
        plots += plot_results(results, ctx.output_dir / label, title=f"{label} graph ({GRAPHS[label]})")
    notes = [
        "Step sizes are ours (MA-OSMA and MA-OSEA η = 300, γ = 0.01), chosen on held-out seeds 100-102; "
        "OSG's rates follow its public code (they depend only on T and |V_i|).",
        "Regret is f_t(greedy_t) - f_t(S_t) with greedy_t the offline greedy on the same f_t; f_t depends on "
        "where each algorithm has led its agents, so an algorithm that tracks targets closely faces larger "
        "per-round gaps: compare utilities first.",
        "Targets mix random-walk, evasive and polyline motion 1:1:1 in a 50 x 50 arena (our reconstruction).",
    ]
    return DemoReport(
        title="MA-OSMA / MA-OSEA vs OSG, multi-target tracking",
        claims=claims,
        tables=tables,
        plots=plots,
        notes=notes,
    )
