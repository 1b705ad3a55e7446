"""`paperpack demo --only sewa`: digits with a noisy tail, SeWA against the averaging baselines.

Setup (the paper note's CPU experiment): scikit-learn's digits (1000 train / 300 val / 497 test,
standardised), an MLP 64-128-10 trained by SGD at a high constant learning rate (0.3, batch 32, 1200 steps)
with 20 % of the training labels replaced at random. Planted instability: every 60 steps one step runs at 5x
the learning rate. The last 300 steps give a window of K = 30 snapshots (every 10 steps); those taken right
after a spike are the planted-bad ones. Arms: last iterate, uniform over the window, LAWA (last k), EMA
(β = 1 - 1/k), random k (mean over 20 draws), SeWA on training minibatches (the paper's F) and, as an
ablation, SeWA on validation minibatches.

Without label noise the MLP interpolates the training set within a few hundred steps, its gradients vanish and
the spikes leave no trace, which is why the noisy-label variant is the default here.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable
from paperpack.sewa.averaging import average_checkpoints, baseline_weights
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.selection import SeWAResult, select_checkpoints

__all__ = [
    "DemoSettings",
    "Trajectory",
    "run_demo",
    "run_seed",
    "selection_seed_spread",
    "sgd_step",
    "train_trajectory",
]

logger = logging.getLogger(__name__)

SELECTION_SEEDS = 20


@dataclass(frozen=True)
class DemoSettings:
    """The knobs of the digits experiment (defaults: the paper note's section 8)."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 0.3
    spike_factor: float = 5.0
    spike_period: int = 60
    label_noise: float = 0.2
    snapshot_every: int = 10
    window: int = 30
    k: int = 5
    random_draws: int = 20
    iterations: int = 100
    mc_samples: int = 4
    selection_batch: int = 128


@dataclass
class Split:
    """Standardised features and labels of one part of the digits data."""

    x: Tensor
    y: Tensor


@dataclass
class Trajectory:
    """The window of one training run and what is known about it."""

    model: nn.Module
    snapshots: list[dict[str, Tensor]]
    bad: list[bool]
    train: Split
    val: Split
    test: Split
    seconds_per_epoch: float


def _digits(seed: int, label_noise: float) -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    train, val, test = order[:1000], order[1000:1300], order[1300:]
    # Pixels almost always blank in the training split would turn a stray test pixel into a huge input: their
    # scale is floored at 1 (they are only centred), as digit pixels range over 0..16.
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1.0)
    noisy = y[train].clone()
    flip = torch.rand(len(train), generator=generator) < label_noise
    noisy[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=generator)
    return (
        Split((x[train] - mean) / std, noisy),
        Split((x[val] - mean) / std, y[val]),
        Split((x[test] - mean) / std, y[test]),
    )


def train_trajectory(seed: int, settings: DemoSettings, *, spikes: bool = True) -> Trajectory:
    """Train the MLP with SGD (planted learning-rate spikes when ``spikes``) and keep the last K snapshots."""
    train, val, test = _digits(seed, settings.label_noise)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed + 1)
    size = len(train.y)
    order, position = torch.randperm(size, generator=generator), 0
    snapshots: list[dict[str, Tensor]] = []
    bad: list[bool] = []
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        if position + settings.batch_size > size:
            order, position = torch.randperm(size, generator=generator), 0
        batch = order[position : position + settings.batch_size]
        position += settings.batch_size
        spiked = spikes and step % settings.spike_period == settings.spike_period // 2
        sgd_step(model, optimizer, train, batch, settings.lr * (settings.spike_factor if spiked else 1.0))
        remaining = settings.steps - step
        if remaining % settings.snapshot_every == 0 and remaining < settings.window * settings.snapshot_every:
            snapshots.append({name: p.detach().clone() for name, p in model.named_parameters()})
            bad.append(spiked)
    seconds = time.perf_counter() - started
    epochs = settings.steps * settings.batch_size / size
    return Trajectory(model, snapshots, bad, train, val, test, seconds / epochs)


def sgd_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch: Tensor, lr: float
) -> None:
    """One training step of the demo on the examples ``batch`` of ``split`` at learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = nn.functional.cross_entropy(model(split.x[batch]), split.y[batch])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _loss_fn(
    model: nn.Module, split: Split, batch_size: int, seed: int
) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """F on a fresh minibatch of ``split`` at every call (one per Monte Carlo sample), drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(params: Mapping[str, Tensor]) -> Tensor:
        batch = torch.randint(0, len(split.y), (min(batch_size, len(split.y)),), generator=generator)
        return nn.functional.cross_entropy(
            functional_call(model, dict(params), (split.x[batch],), tie_weights=False), split.y[batch]
        )

    return loss_fn


def _evaluate(model: nn.Module, state: Mapping[str, Tensor], split: Split) -> tuple[float, float]:
    with torch.no_grad():
        logits = functional_call(model, dict(state), (split.x,))
    accuracy = float((logits.argmax(1) == split.y).float().mean())
    return accuracy, float(nn.functional.cross_entropy(logits, split.y))


@dataclass
class ArmResult:
    """One arm on one seed."""

    accuracy: float
    nll: float
    bad_kept: float


def run_seed(
    seed: int, settings: DemoSettings, *, spikes: bool = True, ablation: bool = True
) -> tuple[dict[str, ArmResult], SeWAResult, Trajectory, float]:
    """Every arm on one training run (SeWA on validation data only with ``ablation``).

    Returns:
        The arms by name, SeWA's result, the trajectory and the seconds SeWA's selection took.
    """
    run = train_trajectory(seed, settings, spikes=spikes)
    model, window, k = run.model, run.snapshots, settings.k

    def arm(state: Mapping[str, Tensor], weights: list[float]) -> ArmResult:
        accuracy, nll = _evaluate(model, state, run.test)
        kept = sum(1.0 for weight, bad in zip(weights, run.bad, strict=True) if weight > 0 and bad)
        return ArmResult(accuracy, nll, kept)

    arms: dict[str, ArmResult] = {}
    for name, strategy in (
        ("last", "last"),
        ("uniform", "uniform"),
        (f"LAWA (k={k})", "lawa"),
        (f"EMA (β=1-1/{k})", "ema"),
    ):
        weights = baseline_weights(len(window), strategy, k=None if strategy in ("last", "uniform") else k)
        arms[name] = arm(
            average_checkpoints(window, strategy, k=None if strategy in ("last", "uniform") else k), weights
        )
    draws = [
        arm(
            average_checkpoints(window, "random", k=k, seed=seed * 1000 + d),
            baseline_weights(len(window), "random", k=k, seed=seed * 1000 + d),
        )
        for d in range(settings.random_draws)
    ]
    arms[f"random (k={k})"] = ArmResult(
        *(statistics.fmean(getattr(r, f) for r in draws) for f in ("accuracy", "nll", "bad_kept"))
    )
    config = SeWAConfig(k=k, iterations=settings.iterations, mc_samples=settings.mc_samples, seed=seed)
    started = time.perf_counter()
    sewa = select_checkpoints(window, _loss_fn(model, run.train, settings.selection_batch, seed), config)
    seconds = time.perf_counter() - started
    arms[f"SeWA (k={k}, train F)"] = arm(sewa.state_dict, sewa.weights.tolist())
    if ablation:
        on_val = select_checkpoints(window, _loss_fn(model, run.val, settings.selection_batch, seed), config)
        arms[f"SeWA (k={k}, val F, ablation)"] = arm(on_val.state_dict, on_val.weights.tolist())
    return arms, sewa, run, seconds


def selection_seed_spread(
    run: Trajectory, settings: DemoSettings, selection_seeds: list[int]
) -> list[tuple[int, float]]:
    """SeWA on the window of ``run`` again, once per other selection seed.

    The selection seed draws the mask noise and the training minibatches of the search (the demo uses the
    training seed for both). Returns (planted-bad snapshots kept, test accuracy) per selection seed.
    """
    results = []
    for selection_seed in selection_seeds:
        config = SeWAConfig(
            k=settings.k, iterations=settings.iterations, mc_samples=settings.mc_samples, seed=selection_seed
        )
        loss_fn = _loss_fn(run.model, run.train, settings.selection_batch, selection_seed)
        sewa = select_checkpoints(run.snapshots, loss_fn, config)
        kept = sum(1 for i in sewa.indices if run.bad[i])
        results.append((kept, _evaluate(run.model, sewa.state_dict, run.test)[0]))
    return results


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _paired(per_seed: list[dict[str, ArmResult]], method: str, baseline: str) -> str:
    """Mean ± std over seeds of the per-seed accuracy difference, and on how many seeds it was >= 0."""
    differences = [seed[method].accuracy - seed[baseline].accuracy for seed in per_seed]
    wins = sum(difference >= 0 for difference in differences)
    mean, spread = statistics.fmean(differences), _spread(differences)
    return f"{mean:+.4f} ± {spread:.4f} (>= 0 on {wins}/{len(differences)} seeds)"


def _summaries(per_seed: list[dict[str, ArmResult]]) -> dict[str, tuple[float, float, float, float, float]]:
    """Per arm: mean accuracy, its std, mean NLL, its std, mean bad kept."""
    result = {}
    for name in per_seed[0]:
        accuracies = [seed[name].accuracy for seed in per_seed]
        nlls = [seed[name].nll for seed in per_seed]
        result[name] = (
            statistics.fmean(accuracies),
            _spread(accuracies),
            statistics.fmean(nlls),
            _spread(nlls),
            statistics.fmean(seed[name].bad_kept for seed in per_seed),
        )
    return result


def _plot(
    path: Path,
    summary: dict[str, tuple[float, float, float, float, float]],
    sewa: SeWAResult,
    bad: list[bool],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(summary)
    left.barh(names, [summary[n][0] for n in names], xerr=[summary[n][1] for n in names], color="tab:blue")
    left.set_xlabel("test accuracy (mean ± std over seeds)")
    left.set_xlim(
        min(summary[n][0] - summary[n][1] for n in names) - 0.01,
        max(summary[n][0] + summary[n][1] for n in names) + 0.01,
    )
    left.invert_yaxis()
    colors = ["tab:red" if b else "tab:green" for b in bad]
    right.bar(range(len(bad)), sewa.probabilities.tolist(), color=colors)
    right.set_xlabel("snapshot (oldest to newest); red = taken right after a planted spike")
    right.set_ylabel("final keep-probability s")
    right.set_title("SeWA's mask, first seed")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _rows(
    summary: dict[str, tuple[float, float, float, float, float]], with_bad: bool
) -> list[list[str | float | int]]:
    rows: list[list[str | float | int]] = []
    for name, (accuracy, accuracy_std, nll, nll_std, bad) in summary.items():
        row: list[str | float | int] = [
            name,
            f"{accuracy:.4f} ± {accuracy_std:.4f}",
            f"{nll:.4f} ± {nll_std:.4f}",
        ]
        if with_bad:
            row.append(round(bad, 2))
        rows.append(row)
    return rows


def run_demo(ctx: DemoContext) -> DemoReport:
    """Run the digits experiment over several seeds and report SeWA beside the baselines."""
    settings = DemoSettings()
    seeds = [ctx.seed + i for i in range(2 if ctx.quick else 6)]
    k = settings.k
    spiked: list[dict[str, ArmResult]] = []
    runs: list[Trajectory] = []
    first: tuple[SeWAResult, list[bool]] | None = None
    sewa_seconds, epoch_seconds = [], []
    for seed in ctx.progress(seeds, desc="seeds (planted spikes)"):
        arms, sewa, run, seconds = run_seed(seed, settings)
        spiked.append(arms)
        runs.append(run)
        first = first or (sewa, run.bad)
        sewa_seconds.append(seconds)
        epoch_seconds.append(run.seconds_per_epoch)
    summary = _summaries(spiked)
    sewa_name, lawa_name = f"SeWA (k={k}, train F)", f"LAWA (k={k})"
    # The spikes fall on the same steps in every run, so every window has the same planted-bad positions.
    bad_count = sum(first[1]) if first else 0
    chance = k * bad_count / settings.window
    metric = f"mean of {len(seeds)} seeds"
    claims = [
        Claim(
            "averaging beats the last iterate: SeWA's test accuracy > last iterate's",
            f"SeWA (k={k})",
            "last iterate",
            f"test accuracy, {metric}",
            summary[sewa_name][0],
            summary["last"][0],
            summary[sewa_name][0] > summary["last"][0],
        ),
        Claim(
            "SeWA excludes planted-bad snapshots: kept <= half of chance",
            f"SeWA (k={k})",
            f"chance (k·{bad_count:.0f}/K)",
            f"planted-bad snapshots kept, {metric}",
            summary[sewa_name][4],
            chance,
            summary[sewa_name][4] <= chance / 2,
        ),
        Claim(
            "SeWA at least matches LAWA with few points: test accuracy >= LAWA's",
            f"SeWA (k={k})",
            lawa_name,
            f"test accuracy, {metric}",
            summary[sewa_name][0],
            summary[lawa_name][0],
            summary[sewa_name][0] >= summary[lawa_name][0],
            note=f"paired difference over seeds: {_paired(spiked, sewa_name, lawa_name)}",
        ),
        Claim(
            "test NLL: SeWA <= uniform over the window + 0.01",
            f"SeWA (k={k})",
            "uniform (SWA over the window)",
            f"test NLL, {metric}",
            summary[sewa_name][2],
            summary["uniform"][2],
            summary[sewa_name][2] <= summary["uniform"][2] + 0.01,
        ),
    ]
    columns = ["arm", "test accuracy", "test NLL", "planted-bad kept (of k)"]
    tables = [
        DemoTable(
            f"With planted spikes ({len(seeds)} seeds, K={settings.window}, k={k})",
            columns,
            _rows(summary, True),
        )
    ]
    notes = [
        f"SeWA's selection took {statistics.fmean(sewa_seconds):.2f} s per run ({settings.iterations} "
        f"iterations × {settings.mc_samples} Monte Carlo samples, one minibatch of "
        f"{settings.selection_batch} per sample), against {statistics.fmean(epoch_seconds) * 1000:.1f} ms "
        "per training epoch.",
        "The training labels carry 20 % noise, so the paper's F (the training loss) is measured on noisy "
        "labels; the val-F ablation uses clean held-out labels.",
        "Paired test-accuracy difference with planted spikes: SeWA - LAWA "
        f"{_paired(spiked, sewa_name, lawa_name)}; SeWA - uniform {_paired(spiked, sewa_name, 'uniform')}; "
        f"SeWA - random {_paired(spiked, sewa_name, f'random (k={k})')}.",
    ]
    if not ctx.quick:
        selection_seeds = list(range(100, 100 + SELECTION_SEEDS))
        spread = [
            selection_seed_spread(run, settings, selection_seeds)
            for run in ctx.progress(runs, desc="other selection seeds")
        ]
        selections = [kept for per_run in spread for kept, _ in per_run]
        with_bad = sum(kept > 0 for kept in selections)
        claims.append(
            Claim(
                "SeWA excludes planted-bad snapshots at other selection seeds too: kept <= half of chance",
                f"SeWA (k={k})",
                f"chance (k·{bad_count:.0f}/K)",
                f"planted-bad snapshots kept, mean of {len(selections)} selections "
                f"({len(seeds)} runs x {SELECTION_SEEDS} selection seeds)",
                statistics.fmean(selections),
                chance,
                statistics.fmean(selections) <= chance / 2,
                note=f"{with_bad} of {len(selections)} selections kept at least one",
            )
        )
        notes.append(
            f"Other selection seeds ({selection_seeds[0]}..{selection_seeds[-1]}: the mask noise and the "
            f"search's minibatches) on each spiked run: {with_bad} of {len(selections)} selections kept a "
            "planted-bad snapshot (per run: "
            + ", ".join(f"{sum(kept > 0 for kept, _ in per_run)}/{len(per_run)}" for per_run in spread)
            + "); test accuracy over them "
            f"{statistics.fmean(a for per_run in spread for _, a in per_run):.4f} ± "
            f"{_spread([a for per_run in spread for _, a in per_run]):.4f}."
        )
        clean = [
            run_seed(seed, settings, spikes=False, ablation=False)[0]
            for seed in ctx.progress(seeds, desc="seeds (no spikes)")
        ]
        clean_summary = _summaries(clean)
        notes.append(
            "Paired test-accuracy difference without spikes: SeWA - LAWA "
            f"{_paired(clean, sewa_name, lawa_name)}; "
            f"SeWA - random {_paired(clean, sewa_name, f'random (k={k})')}."
        )
        tables.append(
            DemoTable(f"Without spikes ({len(seeds)} seeds)", columns[:3], _rows(clean_summary, False))
        )
        claims.append(
            Claim(
                "without bad snapshots SeWA, LAWA and random are within noise (reviewers' finding)",
                f"SeWA (k={k})",
                lawa_name,
                f"test accuracy, no spikes, {metric}",
                clean_summary[sewa_name][0],
                clean_summary[lawa_name][0],
                None,
                note=f"paired difference SeWA - LAWA: {_paired(clean, sewa_name, lawa_name)}; "
                f"random (k={k}): {clean_summary[f'random (k={k})'][0]:.4f}",
            )
        )
    plots = [_plot(ctx.output_dir / "sewa_digits.png", summary, first[0], first[1])] if first else []
    return DemoReport("SeWA on digits with a noisy tail", claims, tables, plots, notes)
