"""``paperpack demo --only merge-router``: four experts of a tiny Llama, merges and Mediator, side by side.

The experiment is :func:`paperpack.merge_router.experiment.run_experiment`; this module turns its results
into tables, the conflict-per-layer plot and the paper's directions as claims.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable
    from paperpack.merge_router.experiment import ExperimentResult

__all__ = ["run_demo"]

MEDIATOR = "Mediator (top half of blocks, δ = 0.1)"  # experiment.MAIN_MEDIATOR (kept import-free)
#: The experiment's sizes per demo scale (the seeds: 1 quick, 3 full).
SCALES: dict[str, dict[str, int]] = {
    "quick": {"pretrain_steps": 60, "finetune_steps": 400, "train_examples": 300, "test_examples": 50},
    "full": {"pretrain_steps": 150, "finetune_steps": 600, "train_examples": 2000, "test_examples": 100},
}
ORACLE = "oracle ensemble (4 experts)"


def _tables(result: ExperimentResult) -> list[DemoTable]:
    from paperpack.core.demo import DemoTable
    from paperpack.core.stats import mean_std
    from paperpack.merge_router.experiment import TASK_NAMES

    rows = []
    for name in result.names():
        runs = result.arm(name)
        routing = [run.routing_accuracy for run in runs if run.routing_accuracy is not None]
        rows.append(
            [
                name,
                *(round(sum(run.accuracy[task] for run in runs) / len(runs), 3) for task in TASK_NAMES),
                str(mean_std([run.mean_accuracy for run in runs])),
                round(runs[0].storage_bytes / result.model_bytes, 3),
                round(sum(routing) / len(routing), 3) if routing else "",
            ]
        )
    seeds = len({run.seed for run in result.arms})
    accuracy = DemoTable(
        title=f"exact-match accuracy per task (mean of {seeds} seed(s)), storage in full models",
        columns=["arm", *TASK_NAMES, "mean ± std", "storage / one model", "routing accuracy"],
        rows=rows,
    )
    routed = DemoTable(
        title="units routed by each Mediator (first seed)",
        columns=["Mediator", "routed units"],
        rows=[
            [arm, ", ".join(units) or "none"]
            for (arm, seed), units in result.routed_units.items()
            if seed == min(s for _, s in result.routed_units)
        ],
    )
    tables = [accuracy, routed]
    if result.ood:
        ood = result.ood

        def row(name: str, values: list[dict[str, float]]) -> list[Any]:
            per_task = [round(sum(v[task] for v in values) / len(values), 3) for task in TASK_NAMES]
            return [name, *per_task, str(mean_std([sum(v.values()) / len(v) for v in values]))]

        tables.append(
            DemoTable(
                title=(
                    f"out-of-distribution prompts (each task in another task's words), {MEDIATOR}: soft "
                    f"against hard routing (mean of {len(ood)} seed(s)); mixed "
                    f"{sum(o.mixed_fraction for o in ood) / len(ood):.2f} of the prompts, mean confidence "
                    f"{sum(o.mean_confidence for o in ood) / len(ood):.2f}, top-1 on the prompt's task "
                    f"{sum(o.top1_accuracy for o in ood) / len(ood):.2f}"
                ),
                columns=["routing", *TASK_NAMES, "mean ± std"],
                rows=[
                    row("soft (top-k mix below the confidence threshold)", [o.soft for o in ood]),
                    row("hard (top-1 expert always)", [o.hard for o in ood]),
                    row("oracle (each task's expert alone)", [o.oracle for o in ood]),
                ],
            )
        )
    return tables


def _claims(result: ExperimentResult) -> list[Claim]:
    from paperpack.core.demo import Claim
    from paperpack.core.stats import at_least, at_most

    def mean(name: str) -> float:
        runs = result.arm(name)
        return sum(run.mean_accuracy for run in runs) / len(runs)

    seeds = len({run.seed for run in result.arms})
    metric = f"mean exact-match accuracy over the 4 tasks, {seeds} seed(s)"
    storage = result.arm(MEDIATOR)[0].storage_bytes / result.model_bytes
    return [
        Claim(
            claim="Mediator's accuracy is close to the oracle ensemble's (within 0.05)",
            method=MEDIATOR,
            baselines=ORACLE,
            metric=metric,
            method_value=mean(MEDIATOR),
            baseline_value=mean(ORACLE),
            held=at_least(mean(MEDIATOR), mean(ORACLE), tolerance=0.05),
        ),
        Claim(
            claim="Mediator's accuracy > plain averaging's when the tasks conflict",
            method=MEDIATOR,
            baselines="plain averaging",
            metric=metric,
            method_value=mean(MEDIATOR),
            baseline_value=mean("plain averaging"),
            held=mean(MEDIATOR) > mean("plain averaging"),
        ),
        Claim(
            claim="Mediator's storage is well under four full models (at most 2)",
            method=MEDIATOR,
            baselines="4 full models",
            metric="bytes on disk / one model's weight file",
            method_value=storage,
            baseline_value=4.0,
            held=at_most(storage, 2.0),
        ),
        *_ablation_claims(result, mean, metric),
        Claim(
            claim="routing every block with dense experts (δ = 1) recovers the oracle ensemble",
            method="Mediator (every block, δ = 1)",
            baselines=ORACLE,
            metric=metric,
            method_value=mean("Mediator (every block, δ = 1)"),
            baseline_value=mean(ORACLE),
            held=None,
            note="a check of the mechanism; the embeddings and LM head stay averaged, so not exact",
        ),
    ]


def _ablation_claims(result: ExperimentResult, mean: Callable[[str], float], metric: str) -> list[Claim]:
    """The paper note's ablations, where the experiment ran them: random blocks, and OOD soft vs hard."""
    from paperpack.core.demo import Claim
    from paperpack.merge_router.experiment import random_arm

    claims = []
    if result.arm(random_arm()):
        claims.append(
            Claim(
                claim="routing the highest-conflict blocks beats routing as many random blocks",
                method=MEDIATOR,
                baselines=random_arm(),
                metric=metric + " (random: every draw)",
                method_value=mean(MEDIATOR),
                baseline_value=mean(random_arm()),
                held=mean(MEDIATOR) > mean(random_arm()),
            )
        )
    if result.ood:
        soft = [sum(o.soft.values()) / len(o.soft) for o in result.ood]
        hard = [sum(o.hard.values()) / len(o.hard) for o in result.ood]
        claims.append(
            Claim(
                claim="on out-of-distribution prompts the soft fallback is at least as good as hard top-1",
                method=f"{MEDIATOR}, soft routing",
                baselines="the same, hard top-1 routing",
                metric=f"mean exact-match accuracy on OOD prompts, {len(soft)} seed(s)",
                method_value=sum(soft) / len(soft),
                baseline_value=sum(hard) / len(hard),
                held=None,
                note="the paper note asks to report this, not assert it",
            )
        )
    return claims


def run_demo(ctx: DemoContext) -> DemoReport:
    """Train four experts, merge them six ways and compile three Mediators; report accuracy and storage."""
    from paperpack.core.demo import DemoReport
    from paperpack.core.plotting import bar_plot
    from paperpack.core.stats import mean_std
    from paperpack.merge_router.experiment import ExperimentConfig, run_experiment

    sizes = SCALES[ctx.scale]
    config = ExperimentConfig(
        seeds=ctx.seeds(quick=1, full=3),
        pretrain_steps=sizes["pretrain_steps"],
        finetune_steps=sizes["finetune_steps"],
        train_examples=sizes["train_examples"],
        test_examples=sizes["test_examples"],
    )
    result = run_experiment(
        config, ctx.output_dir / "models", progress=lambda seeds: ctx.progress(seeds, desc="seeds")
    )
    units = list(next(iter(result.conflicts.values())))
    conflicts = {
        unit: mean_std([result.conflicts[seed][unit] for seed in result.conflicts]) for unit in units
    }
    plot = bar_plot(
        ctx.output_dir / "conflicts.png",
        conflicts,
        xlabel="d_l (sign conflict of the trimmed task vectors)",
        title="parameter conflict per unit between the four experts",
    )
    accuracy = {name: mean_std([run.mean_accuracy for run in result.arm(name)]) for name in result.names()}
    bars = bar_plot(
        ctx.output_dir / "accuracy.png", accuracy, xlabel="mean exact-match accuracy", title="arms"
    )
    return DemoReport(
        title="Mediator vs merging and the oracle ensemble: four synthetic tasks, tiny Llama",
        claims=_claims(result),
        tables=_tables(result),
        plots=[plot, bars],
        notes=[
            "Tasks on five random digits: the first, the last, the count of a given digit, the first plus "
            "one mod 10; "
            "each with its own prompt words. "
            "The base is trained on their mixture, each expert on its task alone (AdamW 3e-3, batch 32).",
            "Accuracy is exact match of the answer under teacher forcing, on held-out examples.",
            "Storage counts every file of the Mediator folder (dense model, sparse experts, router, "
            "tokenizer, config) against one model's weight file.",
        ],
    )
