"""Digits with a noisy tail: SeWA against the averaging baselines, as typed results (what the demo reports).

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

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from paperpack.sewa.averaging import Strategy, average_snapshots, baseline_weights
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.selection import SeWAResult, select_snapshots

__all__ = [
    "ArmNames",
    "ArmResult",
    "ExperimentResults",
    "ExperimentSettings",
    "SeedResult",
    "SelectionOutcome",
    "Split",
    "Trajectory",
    "evaluate",
    "minibatch_loss",
    "run_experiment",
    "run_seed",
    "selection_seed_spread",
    "sgd_step",
    "train_trajectory",
]


@dataclass(frozen=True)
class ExperimentSettings:
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


@dataclass(frozen=True)
class ArmNames:
    """The name of each arm, as the tables print it."""

    last: str
    uniform: str
    lawa: str
    ema: str
    random: str
    sewa: str
    sewa_val: str

    @classmethod
    def for_k(cls, k: int) -> ArmNames:
        """The names for ``k`` snapshots kept."""
        return cls(
            last="last",
            uniform="uniform",
            lawa=f"LAWA (k={k})",
            ema=f"EMA (β=1-1/{k})",
            random=f"random (k={k})",
            sewa=f"SeWA (k={k}, train F)",
            sewa_val=f"SeWA (k={k}, val F, ablation)",
        )


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


@dataclass(frozen=True)
class ArmResult:
    """One arm on one seed: test accuracy, test NLL, planted-bad snapshots kept (a mean for random k)."""

    accuracy: float
    nll: float
    bad_kept: float


@dataclass
class SeedResult:
    """Every arm on one training run.

    Attributes:
        arms: arm name (``ArmNames``) -> result, in the tables' order.
        sewa: SeWA's selection on training minibatches.
        trajectory: the training run.
        selection_seconds: how long that selection took.
    """

    arms: dict[str, ArmResult]
    sewa: SeWAResult
    trajectory: Trajectory
    selection_seconds: float


@dataclass(frozen=True)
class SelectionOutcome:
    """SeWA's selection at one other selection seed: planted-bad snapshots kept, and the test accuracy."""

    bad_kept: int
    accuracy: float


@dataclass
class ExperimentResults:
    """The whole experiment.

    Attributes:
        settings: what was run.
        names: the arms' names.
        spiked: one result per seed, with planted spikes.
        clean: one result per seed without spikes (None when not run).
        spread: per spiked run, SeWA at each other selection seed (None when not run).
        selection_seeds: those selection seeds.
    """

    settings: ExperimentSettings
    names: ArmNames
    spiked: list[SeedResult]
    clean: list[SeedResult] | None
    spread: list[list[SelectionOutcome]] | None
    selection_seeds: list[int]

    def values(self, arm: str, metric: str, *, spikes: bool = True) -> list[float]:
        """``metric`` (``"accuracy"``, ``"nll"`` or ``"bad_kept"``) of ``arm`` on every seed."""
        runs = self.spiked if spikes else self.clean
        if runs is None:
            raise ValueError("the experiment ran without the no-spike variant")
        return [float(getattr(run.arms[arm], metric)) for run in runs]


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


def train_trajectory(seed: int, settings: ExperimentSettings, *, spikes: bool = True) -> Trajectory:
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
    """One training step of the experiment on the examples ``batch`` of ``split`` at learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = nn.functional.cross_entropy(model(split.x[batch]), split.y[batch])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def minibatch_loss(
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


def evaluate(model: nn.Module, state: Mapping[str, Tensor], split: Split) -> tuple[float, float]:
    """Accuracy and NLL of ``model`` with the parameters ``state`` on ``split``."""
    with torch.no_grad():
        logits = functional_call(model, dict(state), (split.x,))
    accuracy = float((logits.argmax(1) == split.y).float().mean())
    return accuracy, float(nn.functional.cross_entropy(logits, split.y))


def run_seed(
    seed: int, settings: ExperimentSettings, *, spikes: bool = True, ablation: bool = True
) -> SeedResult:
    """Every arm on one training run (SeWA on validation data only with ``ablation``)."""
    run = train_trajectory(seed, settings, spikes=spikes)
    model, window, k = run.model, run.snapshots, settings.k
    names = ArmNames.for_k(k)

    def arm(state: Mapping[str, Tensor], weights: Sequence[float]) -> ArmResult:
        accuracy, nll = evaluate(model, state, run.test)
        kept = sum(1.0 for weight, bad in zip(weights, run.bad, strict=True) if weight > 0 and bad)
        return ArmResult(accuracy, nll, kept)

    arms: dict[str, ArmResult] = {}
    baselines: tuple[tuple[str, Strategy], ...] = (
        (names.last, "last"),
        (names.uniform, "uniform"),
        (names.lawa, "lawa"),
        (names.ema, "ema"),
    )
    for name, strategy in baselines:
        kept = None if strategy in ("last", "uniform") else k
        arms[name] = arm(
            average_snapshots(window, strategy, k=kept), baseline_weights(len(window), strategy, k=kept)
        )
    draws = [
        arm(
            average_snapshots(window, "random", k=k, seed=seed * 1000 + d),
            baseline_weights(len(window), "random", k=k, seed=seed * 1000 + d),
        )
        for d in range(settings.random_draws)
    ]
    arms[names.random] = ArmResult(
        *(statistics.fmean(getattr(r, f) for r in draws) for f in ("accuracy", "nll", "bad_kept"))
    )
    config = SeWAConfig(k=k, iterations=settings.iterations, mc_samples=settings.mc_samples, seed=seed)
    started = time.perf_counter()
    sewa = select_snapshots(window, minibatch_loss(model, run.train, settings.selection_batch, seed), config)
    seconds = time.perf_counter() - started
    arms[names.sewa] = arm(sewa.state_dict, sewa.weights.tolist())
    if ablation:
        on_val = select_snapshots(
            window, minibatch_loss(model, run.val, settings.selection_batch, seed), config
        )
        arms[names.sewa_val] = arm(on_val.state_dict, on_val.weights.tolist())
    return SeedResult(arms, sewa, run, seconds)


def selection_seed_spread(
    run: Trajectory, settings: ExperimentSettings, selection_seeds: Sequence[int]
) -> list[SelectionOutcome]:
    """SeWA on the window of ``run`` again, once per other selection seed.

    The selection seed draws the mask noise and the training minibatches of the search (``run_seed`` uses the
    training seed for both).
    """
    outcomes = []
    for selection_seed in selection_seeds:
        config = SeWAConfig(
            k=settings.k, iterations=settings.iterations, mc_samples=settings.mc_samples, seed=selection_seed
        )
        loss_fn = minibatch_loss(run.model, run.train, settings.selection_batch, selection_seed)
        sewa = select_snapshots(run.snapshots, loss_fn, config)
        kept = sum(1 for i in sewa.indices if run.bad[i])
        outcomes.append(SelectionOutcome(kept, evaluate(run.model, sewa.state_dict, run.test)[0]))
    return outcomes


def run_experiment(
    seeds: Sequence[int],
    settings: ExperimentSettings | None = None,
    *,
    clean: bool = True,
    selection_seeds: Sequence[int] = (),
    progress: Callable[[Sequence[Any], str], Iterable[Any]] | None = None,
) -> ExperimentResults:
    """Run the digits experiment on ``seeds``.

    Args:
        seeds: the training seeds (data split, label noise, initialisation, order), one run each.
        settings: the knobs (``ExperimentSettings()`` when None).
        clean: also run every seed without planted spikes (no SeWA ablation there).
        selection_seeds: other selection seeds at which SeWA is run again on each spiked window.
        progress: wraps each loop (``iterable, description -> iterable``), e.g. a demo's progress bar.

    Returns:
        The typed results.

    Examples:
        >>> from paperpack.sewa.experiment import ExperimentSettings, run_experiment
        >>> short = ExperimentSettings(steps=240, window=6, k=2, iterations=5, random_draws=2)
        >>> results = run_experiment([0], short, clean=False)
        >>> sorted(results.spiked[0].arms)[:2]
        ['EMA (β=1-1/2)', 'LAWA (k=2)']
    """
    settings = ExperimentSettings() if settings is None else settings

    def loop(items: Sequence[Any], description: str) -> Iterable[Any]:
        return items if progress is None else progress(items, description)

    spiked = [run_seed(int(seed), settings) for seed in loop(seeds, "seeds (planted spikes)")]
    spread = None
    if selection_seeds:
        spread = [
            selection_seed_spread(result.trajectory, settings, selection_seeds)
            for result in loop(spiked, "other selection seeds")
        ]
    clean_runs = None
    if clean:
        clean_runs = [
            run_seed(int(seed), settings, spikes=False, ablation=False)
            for seed in loop(seeds, "seeds (no spikes)")
        ]
    return ExperimentResults(
        settings, ArmNames.for_k(settings.k), spiked, clean_runs, spread, list(selection_seeds)
    )
