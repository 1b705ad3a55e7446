"""The ``paperpack demo`` entry: O1-Pruner against SFT-shortest, DPO and λ = 0 on the addition-trace task."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from paperpack.o1_pruner.experiment import ARMS, ExperimentSettings, SeedResult, run_seed

if TYPE_CHECKING:
    from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable

__all__ = ["QUICK", "run_demo"]

QUICK = ExperimentSettings(
    sft_problems=600, sft_steps=150, train_problems=32, eval_problems=48, num_presamples=6
)
"""The quick scale (``paperpack demo --quick``); the full scale is :class:`ExperimentSettings`'s defaults."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _summary(results: list[SeedResult], arm: str, key: str) -> tuple[float, float]:
    return _mean_std([getattr(r.arms[arm], key) for r in results])


def _table(results: list[SeedResult]) -> DemoTable:
    from paperpack.core.demo import DemoTable

    rows: list[list[str | float | int]] = []
    for arm in ARMS:
        cells: list[str | float | int] = [arm]
        for key, scale in (("accuracy", 100), ("mean_length", 1), ("aes", 1), ("aes_table", 1)):
            mean, std = _summary(results, arm, key)
            cells.append(f"{mean * scale:.2f} ± {std * scale:.2f}")
        rows.append(cells)
    return DemoTable(
        title=f"greedy evaluation, mean ± std over seeds {[r.seed for r in results]}",
        columns=["arm", "accuracy %", "mean length (tokens)", "AES (γ=5)", "AES (table's variant)"],
        rows=rows,
    )


def _plot(results: list[SeedResult], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from paperpack.core.files import atomic_path

    figure = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for arm in ARMS:
        (acc, acc_std), (length, length_std) = (
            _summary(results, arm, "accuracy"),
            _summary(results, arm, "mean_length"),
        )
        axes.errorbar(length, 100 * acc, xerr=length_std, yerr=100 * acc_std, fmt="o", capsize=3, label=arm)
    axes.set_xlabel("mean completion length (tokens)")
    axes.set_ylabel("greedy accuracy (%)")
    axes.set_title("accuracy against length (mean ± std over seeds)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    return path


def _claims(results: list[SeedResult], metric: str) -> list[Claim]:
    from paperpack.core.demo import Claim

    def mean(arm: str, key: str) -> float:
        return _summary(results, arm, key)[0]

    ref_len, o1_len = mean("reference", "mean_length"), mean("O1-Pruner", "mean_length")
    cut = (ref_len - o1_len) / ref_len
    ref_acc, o1_acc = mean("reference", "accuracy"), mean("O1-Pruner", "accuracy")
    zero_len, zero_acc = mean("O1-Pruner λ=0", "mean_length"), mean("O1-Pruner λ=0", "accuracy")
    aes = {arm: mean(arm, "aes") for arm in ARMS}
    return [
        Claim(
            "O1-Pruner cuts the mean length by >= 20 % (tens of percent)",
            "O1-Pruner",
            "reference",
            f"mean length (tokens), {metric}",
            o1_len,
            ref_len,
            cut >= 0.2,
            f"cut {100 * cut:.1f} %",
        ),
        Claim(
            "O1-Pruner's accuracy >= the reference's − 1 point",
            "O1-Pruner",
            "reference",
            f"greedy accuracy, {metric}",
            o1_acc,
            ref_acc,
            o1_acc >= ref_acc - 0.01,
            f"difference {100 * (o1_acc - ref_acc):+.1f} points",
        ),
        Claim(
            "λ = 0 shortens more than λ > 0",
            "O1-Pruner λ=0",
            "O1-Pruner",
            f"mean length, {metric}",
            zero_len,
            o1_len,
            None,
            "reported (the paper note: report)",
        ),
        Claim(
            "λ = 0 loses accuracy against λ > 0",
            "O1-Pruner λ=0",
            "O1-Pruner",
            f"accuracy, {metric}",
            zero_acc,
            o1_acc,
            None,
            "reported",
        ),
        Claim(
            "AES: O1-Pruner > DPO > SFT shortest",
            "O1-Pruner",
            "DPO, SFT shortest",
            f"AES (γ=5), {metric}",
            aes["O1-Pruner"],
            max(aes["DPO"], aes["SFT shortest"]),
            None,
            f"DPO {aes['DPO']:.3f}, SFT shortest {aes['SFT shortest']:.3f}; reported",
        ),
    ]


def run_demo(ctx: DemoContext) -> DemoReport:
    """Run the experiment over seeds; table, accuracy-vs-length plot and claims."""
    from paperpack.core.demo import DemoReport

    settings = ctx.pick(quick=QUICK, full=ExperimentSettings())
    seeds = ctx.seeds(quick=2, full=3)
    results = [run_seed(seed, settings) for seed in ctx.progress(seeds, desc="seeds", total=len(seeds))]
    metric = f"{len(seeds)} seeds, {settings.eval_problems} held-out problems"
    presampled = ", ".join(f"{100 * r.presample_accuracy:.0f} % / {r.presample_length:.1f}" for r in results)
    notes = [
        f"Reference: tiny_causal_lm() taught by SFT ({settings.sft_steps} steps) on {settings.sft_problems} "
        "traces "
        f"adding {settings.terms} numbers with 0-{settings.max_checks} redundant checks per step, each check "
        f"copying the sum wrongly with probability {settings.slip}.",
        f"Pre-sampling: K = {settings.num_presamples}, temperature {settings.temperature}, on "
        f"{settings.train_problems} problems; sample accuracy / mean length per seed: {presampled}.",
        f"O1-Pruner: λ = {settings.lam}, clip [-2, 4], z-score, ε = 0.2, {settings.epochs} epochs at lr "
        f"{settings.learning_rate}; the baselines train as long at the same lr (DPO: TRL's DPOTrainer, "
        "β = 0.1).",
        "Baseline data per seed (SFT samples / DPO pairs): "
        + ", ".join(f"{r.sft_samples} / {r.dpo_pairs}" for r in results)
        + ".",
        f"Run time per seed: {', '.join(f'{r.seconds:.0f} s' for r in results)}.",
    ]
    return DemoReport(
        title="O1-Pruner: shorter addition traces at the reference's accuracy",
        claims=_claims(results, metric),
        tables=[_table(results)],
        plots=[_plot(results, ctx.output_dir / "accuracy_vs_length.png")],
        notes=notes,
    )
