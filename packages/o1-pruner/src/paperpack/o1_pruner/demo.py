"""The ``paperpack demo`` entry: O1-Pruner against SFT-shortest, DPO and λ = 0 on the addition-trace task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from paperpack.o1_pruner.experiment import ARMS, ExperimentSettings, SeedResult, run_seed

if TYPE_CHECKING:
    from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable

__all__ = ["QUICK", "run_demo"]

QUICK = ExperimentSettings(sft_problems=2500, sft_steps=400, train_problems=64, eval_problems=100)
"""The quick scale (``paperpack demo --quick``); the full scale is :class:`ExperimentSettings`'s defaults."""


def _summary(results: list[SeedResult], arm: str, key: str) -> tuple[float, float]:
    from paperpack.core.stats import mean_std

    summary = mean_std([getattr(r.arms[arm], key) for r in results])
    return summary.mean, summary.std


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
    from paperpack.core.plotting import figure_file, style_axes

    with figure_file(path, size=(6.4, 4.4)) as (axes,):
        for arm in ARMS:
            (acc, acc_std), (length, length_std) = (
                _summary(results, arm, "accuracy"),
                _summary(results, arm, "mean_length"),
            )
            axes.errorbar(
                length, 100 * acc, xerr=length_std, yerr=100 * acc_std, fmt="o", capsize=3, label=arm
            )
        style_axes(
            axes,
            xlabel="mean completion length (tokens)",
            ylabel="greedy accuracy (%)",
            title="accuracy against length (mean ± std over seeds)",
        )
    return path


def _claims(results: list[SeedResult], metric: str) -> list[Claim]:
    from paperpack.core.demo import Claim

    def mean(arm: str, key: str) -> float:
        return _summary(results, arm, key)[0]

    ref_len, o1_len = mean("reference", "mean_length"), mean("O1-Pruner", "mean_length")
    cut = (ref_len - o1_len) / ref_len
    ref_acc, o1_acc = mean("reference", "accuracy"), mean("O1-Pruner", "accuracy")
    zero_len, zero_acc = mean("O1-Pruner λ=0", "mean_length"), mean("O1-Pruner λ=0", "accuracy")
    high_len, high_acc = mean("O1-Pruner high λ", "mean_length"), mean("O1-Pruner high λ", "accuracy")
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
            "a smaller λ shortens more and loses accuracy (λ = 0 against λ > 0)",
            "O1-Pruner λ=0",
            "O1-Pruner",
            f"mean length (tokens), {metric}",
            zero_len,
            o1_len,
            zero_len < o1_len and zero_acc < o1_acc,
            f"accuracy {100 * zero_acc:.1f} % against {100 * o1_acc:.1f} %",
        ),
        Claim(
            "a larger λ shortens less and keeps more accuracy (high λ against λ)",
            "O1-Pruner high λ",
            "O1-Pruner",
            f"mean length (tokens), {metric}",
            high_len,
            o1_len,
            None,
            f"accuracy {100 * high_acc:.1f} % against {100 * o1_acc:.1f} %; reported",
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
    seeds = ctx.seeds(quick=1, full=3)
    results = [run_seed(seed, settings) for seed in ctx.progress(seeds, desc="seeds", total=len(seeds))]
    metric = f"{len(seeds)} seeds, {settings.eval_problems} held-out problems"
    presampled = ", ".join(f"{100 * r.presample_accuracy:.0f} % / {r.presample_length:.1f}" for r in results)
    notes = [
        f"Reference: tiny_causal_lm() taught by SFT ({settings.sft_steps} steps of 32) on "
        f"{settings.sft_problems} traces adding {settings.terms} numbers from 1 to {settings.max_number}, "
        f"0-{settings.max_checks} redundant checks after each step (each copying the sum wrongly with "
        f"probability {settings.slip}), a step adding two numbers at once with probability {settings.jump}.",
        f"Pre-sampling: K = {settings.num_presamples}, temperature {settings.temperature}, on "
        f"{settings.train_problems} problems; sample accuracy / mean length per seed: {presampled}.",
        f"O1-Pruner: λ = {settings.lam} (high λ: {settings.lam_high}; λ=0), clip [-2, 4], z-score, ε = 0.2, "
        f"reference log-probabilities stored at pre-sampling, {settings.epochs} epoch(s) at lr "
        f"{settings.learning_rate}; the baselines train as long at the same lr (DPO: TRL's DPOTrainer, "
        "β = 0.1).",
        "Baseline data per seed (SFT samples / DPO pairs): "
        + ", ".join(f"{r.sft_samples} / {r.dpo_pairs}" for r in results)
        + ".",
        "Per seed, accuracy % / mean length: "
        + "; ".join(
            f"{arm}: "
            + ", ".join(f"{100 * r.arms[arm].accuracy:.1f} / {r.arms[arm].mean_length:.1f}" for r in results)
            for arm in ARMS
        )
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
