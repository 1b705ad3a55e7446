"""The demo's spectral merges with ``svd: fast`` and ``svd: exact``: are the merged accuracies unchanged?

For each seed, trains the base model and the three experts at the quick demo's budget
(:data:`paperpack.r_tsvm.demo.QUICK`, :func:`paperpack.r_tsvm.experiment.prepare_seed`, as the demo's
:func:`~paperpack.r_tsvm.experiment.run_seed` does), then merges them with TSV-M, R-TSVM, Iso-C and Iso-CTS on both paths,
each method's scale picked on validation as the demo does, and prints the test accuracies side by side. Run
from the workspace root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_demo_svd.py --seeds 0
"""

from __future__ import annotations

import argparse
import statistics

from paperpack.r_tsvm import synthetic
from paperpack.r_tsvm.demo import QUICK
from paperpack.r_tsvm.experiment import prepare_seed

METHODS = ("tsv_m", "r_tsvm", "iso_c", "iso_cts")


def seed_rows(seed: int) -> dict[str, tuple[list[float], float | None]]:
    """Row label -> (test accuracy per task, chosen scale) for the base model and every (method, path)."""
    setup = prepare_seed(seed, QUICK)
    evaluator = setup.evaluator()
    base_scores = evaluator.score(setup.base, "test")
    rows = {"base model": ([base_scores[task] for task in synthetic.TASKS], None)}
    for method in METHODS:
        for svd in ("fast", "exact"):
            scored = evaluator.best(method, setup.experts, QUICK.grid, seed=seed, svd=svd)
            rows[f"{method} ({svd})"] = ([scored.scores[task] for task in synthetic.TASKS], scored.scale)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print("| seed | merge | " + " | ".join(synthetic.TASKS) + " | mean | scale |")
    print("|---|---|" + "---|" * (len(synthetic.TASKS) + 2))
    for seed in args.seeds:
        for label, (scores, scale) in seed_rows(seed).items():
            cells = " | ".join(f"{value:.3f}" for value in scores)
            mean = statistics.mean(scores)
            print(
                f"| {seed} | {label} | {cells} | {mean:.3f} | {'' if scale is None else scale} |", flush=True
            )


if __name__ == "__main__":
    main()
