"""The tiny-scale experiments behind ``paperpack demo --only hrp-lora``, as functions returning typed results.

A. Low-rank regression (the paper's setting, where the best rank-r solution is known): y = (W0 + M)·x + ε with
   x ~ N(0, I), W0 frozen and M = U·diag(σ)·Vᵀ, σ_i = decay^i. A rank-r LoRA on W0 can at best reach the
   Eckart-Young error ‖M − M_r‖²_F; we report the excess over it (relative to ‖M‖²_F) and the overlap of the
   learned update's top-r right singular subspace with M's. Arms: PEFT's default init, HRP at several preheat
   ranks, PiSSA and OLoRA (PEFT's ``init_lora_weights``), and an oracle whose A is M's top-r right singular
   vectors (HRP's init with the true M). Regimes: classic (A and B trained) and asymmetric (A frozen after
   the init; the preheat itself always trains both factors). Every arm gets the same ``steps`` batches: HRP
   spends ``preheat_steps`` of them on the preheat and trains the rank-r adapter on the rest.

B. Transfer on scikit-learn's digits: an MLP 64-128-128-10 pretrained on the digits, then fine-tuned on the
   digits with their 64 pixels rotated by a fixed random orthogonal matrix (the same labels). LoRA r on both
   hidden layers, the head trained in full (``modules_to_save``); arms default LoRA, HRP, PiSSA and full
   fine-tuning, the preheat counted in HRP's budget.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from torch.nn import functional

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int
from paperpack.hrp_lora.adapters import PREHEAT_ADAPTER, lora_layers
from paperpack.hrp_lora.config import HRPConfig, Init
from paperpack.hrp_lora.initialize import hrp_initialize
from paperpack.hrp_lora.svd import DEFAULT_ROW_NORM

__all__ = [
    "REGIMES",
    "ArmResult",
    "DigitsResults",
    "DigitsSetup",
    "RegressionResults",
    "RegressionSetup",
    "run_digits",
    "run_regression",
]

REGIMES = ("classic", "asymmetric")
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class RegressionSetup:
    """Experiment A's knobs (defaults ours, after the paper note's section 8)."""

    dim: int = 64
    rank: int = 4
    decay: float = 0.8
    noise: float = 0.05
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-2
    preheat_steps: int = 10
    preheat_ranks: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        check_int("dim", self.dim, minimum=2)
        check_int("rank", self.rank, minimum=1, maximum=self.dim)
        check_int("preheat_steps", self.preheat_steps, minimum=1, maximum=self.steps - 1)
        for R in self.preheat_ranks:
            check_int("preheat_ranks", R, minimum=self.rank)


@dataclass
class ArmResult:
    """One arm over seeds: final metrics per seed and a curve per seed (one value per step)."""

    name: str
    final: list[float] = field(default_factory=list)
    overlap: list[float] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)

    def at(self, step: int) -> list[float]:
        """The curve's value after ``step`` steps (1-based), one per seed."""
        return [curve[step - 1] for curve in self.curves]


@dataclass
class RegressionResults:
    """Experiment A: ``arms[regime][arm]``; ``optimum`` = ‖M − M_r‖²/‖M‖², the relative Eckart-Young floor."""

    setup: RegressionSetup
    seeds: list[int]
    optimum: float
    arms: dict[str, dict[str, ArmResult]]


class _Linear(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)  # type: ignore[no-any-return]


def _mse(model: nn.Module, batch: Batch) -> Tensor:
    return functional.mse_loss(model(batch[0]), batch[1])


def _factors(model: PeftModel) -> tuple[Tensor, Tensor, Tensor, float]:
    """(W, A, B, s) of the adapted layer as PEFT initialized it (PiSSA and OLoRA change W to a residual)."""
    layer: Any = next(iter(lora_layers(model, "default").values()))  # PEFT's layers are untyped
    return (
        layer.get_base_layer().weight.detach().clone(),
        layer.lora_A["default"].weight.detach().clone(),
        layer.lora_B["default"].weight.detach().clone(),
        float(layer.scaling["default"]),
    )


def _overlap(delta: Tensor, V_r: Tensor) -> float:
    """‖V_rᵀ·V̂_r‖²_F / r: 1 when the update's top-r row space is M's, r/d for a random one."""
    rank = V_r.shape[0]
    _, _, Vh = torch.linalg.svd(delta, full_matrices=False)
    return float(torch.linalg.matrix_norm(V_r @ Vh[:rank].T) ** 2 / rank)


def curve_recorder(curve: list[float], metric: Callable[[Tensor], float]) -> Callable[[Tensor], None]:
    """A callback appending ``metric(weight)`` to ``curve``."""

    def record(weight: Tensor) -> None:
        curve.append(metric(weight))

    return record


def _train_factors(
    start: tuple[Tensor, Tensor, Tensor, float],
    batches: Sequence[Batch],
    lr: float,
    record: Callable[[Tensor], None],
    *,
    asymmetric: bool,
) -> Tensor:
    """Train LoRA factors from ``start`` with Adam: the forward of PEFT's linear LoRA, y = x·Wᵀ + s·x·Aᵀ·Bᵀ.

    Written on plain tensors (the same arithmetic as a PEFT ``Linear`` without dropout, without its
    per-call overhead); ``record`` gets the effective weight after every step. Returns the final weight.
    """
    W, A, B, s = start
    A, B = A.clone().requires_grad_(not asymmetric), B.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([B] if asymmetric else [A, B], lr=lr)
    for x, y in batches:
        functional.mse_loss(x @ W.T + s * (x @ A.T) @ B.T, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            record(W + s * B @ A)
    with torch.no_grad():
        return W + s * B @ A


def _regression_seed(setup: RegressionSetup, seed: int, results: dict[str, dict[str, ArmResult]]) -> float:
    generator = torch.Generator().manual_seed(seed)
    d, r = setup.dim, setup.rank
    W0 = torch.randn(d, d, generator=generator) / math.sqrt(d)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    sigma = setup.decay ** torch.arange(d, dtype=torch.float32)
    M = U @ torch.diag(sigma) @ V.T
    target = W0 + M
    batches: list[Batch] = []
    for _ in range(setup.steps):
        x = torch.randn(setup.batch_size, d, generator=generator)
        batches.append(
            (x, x @ target.T + setup.noise * torch.randn(setup.batch_size, d, generator=generator))
        )
    norm = float((sigma**2).sum())
    optimum = float((sigma[r:] ** 2).sum()) / norm
    V_r = V[:, :r].T

    def excess(weight: Tensor) -> float:
        return float(torch.linalg.matrix_norm(target - weight) ** 2) / norm - optimum

    def lora(**overrides: Any) -> LoraConfig:
        return LoraConfig(r=r, lora_alpha=r, target_modules=["lin"], **overrides)

    starts: dict[str, tuple[tuple[Tensor, Tensor, Tensor, float], list[float]]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        starts["default"] = (_factors(get_peft_model(_Linear(W0), lora())), [])
        starts["PiSSA"] = (_factors(get_peft_model(_Linear(W0), lora(init_lora_weights="pissa"))), [])
        starts["OLoRA"] = (_factors(get_peft_model(_Linear(W0), lora(init_lora_weights="olora"))), [])
        _, _, B, s = starts["default"][0]
        starts["oracle"] = ((W0, DEFAULT_ROW_NORM * V_r, torch.zeros_like(B), s), [])
        for R in setup.preheat_ranks:
            preheat_curve: list[float] = []

            def preheat_loss(model: nn.Module, batch: Batch, curve: list[float] = preheat_curve) -> Tensor:
                layer: Any = next(iter(lora_layers(model, PREHEAT_ADAPTER).values()))
                curve.append(excess((W0 + layer.get_delta_weight(PREHEAT_ADAPTER)).detach()))
                return _mse(model, batch)

            config = HRPConfig(
                preheat_rank=R, preheat_steps=setup.preheat_steps, preheat_lr=setup.lr, seed=seed
            )
            model = hrp_initialize(
                _Linear(W0), lora(), batches[: setup.preheat_steps], config, loss_fn=preheat_loss
            )
            starts[f"HRP R={R}"] = (_factors(model), preheat_curve)
    for regime in REGIMES:
        for name, (start, preheat) in starts.items():
            curve = list(preheat)
            main = batches[len(preheat) :]
            final = _train_factors(
                start,
                main,
                setup.lr,
                curve_recorder(curve, excess),
                asymmetric=regime == "asymmetric",
            )
            arm = results[regime].setdefault(name, ArmResult(name))
            arm.final.append(curve[-1])
            arm.overlap.append(_overlap(final - W0, V_r))
            arm.curves.append(curve)
    return optimum


def run_regression(
    setup: RegressionSetup, seeds: Sequence[int], *, progress: Callable[[Sequence[int]], Any] = iter
) -> RegressionResults:
    """Run experiment A for every seed; ``progress`` may wrap the seeds in a progress bar.

    The preheat curve of an HRP arm is the excess of the rank-R preheat model (one value per preheat step);
    the main run then restarts from the base (B = 0), so every curve has ``setup.steps`` values.
    """
    if not seeds:
        raise ConfigError("`seeds` must name at least one seed")
    arms: dict[str, dict[str, ArmResult]] = {regime: {} for regime in REGIMES}
    optimum = 0.0
    for seed in progress(seeds):
        optimum = _regression_seed(setup, seed, arms)
    return RegressionResults(setup=setup, seeds=list(seeds), optimum=optimum, arms=arms)


@dataclass(frozen=True)
class DigitsSetup:
    """Experiment B's knobs (defaults ours)."""

    hidden: int = 128
    pretrain_steps: int = 400
    rank: int = 2
    steps: int = 200
    batch_size: int = 64
    lr: float = 5e-3
    preheat_rank: int = 32
    preheat_steps: int = 20
    eval_every: int = 10

    def __post_init__(self) -> None:
        check_int("preheat_steps", self.preheat_steps, minimum=1, maximum=self.steps - 1)
        check_int("eval_every", self.eval_every, minimum=1)


@dataclass
class DigitsResults:
    """Experiment B: test accuracy per arm (``final`` and a curve every ``eval_every`` steps)."""

    setup: DigitsSetup
    seeds: list[int]
    pretrained_accuracy: list[float]
    shifted_accuracy: list[float]
    arms: dict[str, ArmResult]


class _MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = (
            nn.Linear(64, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = functional.cross_entropy(logits, labels)
        return out


def _digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(0.7 * len(x))
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-3
    x = (x - mean) / std
    return x[:split], y[:split], x[split:], y[split:]


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x)["logits"].argmax(-1) == y).float().mean())


def _minibatches(
    x: Tensor, y: Tensor, count: int, size: int, generator: torch.Generator
) -> list[dict[str, Tensor]]:
    return [
        {"x": x[index], "labels": y[index]}
        for index in (torch.randint(0, len(x), (size,), generator=generator) for _ in range(count))
    ]


def _digits_seed(setup: DigitsSetup, seed: int, results: DigitsResults) -> None:
    x_train, y_train, x_test, y_test = _digits(seed)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pretrained = _MLP(setup.hidden)
    optimizer = torch.optim.Adam(pretrained.parameters(), lr=setup.lr)
    for batch in _minibatches(x_train, y_train, setup.pretrain_steps, setup.batch_size, generator):
        pretrained(batch["x"], batch["labels"])["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    results.pretrained_accuracy.append(_accuracy(pretrained, x_test, y_test))
    rotation, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator))
    shifted_train, shifted_test = x_train @ rotation.T, x_test @ rotation.T
    results.shifted_accuracy.append(_accuracy(pretrained, shifted_test, y_test))
    batches = _minibatches(shifted_train, y_train, setup.steps, setup.batch_size, generator)

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        out: Tensor = model(batch["x"], batch["labels"])["loss"]
        return out

    def train(name: str, model: nn.Module, main: Sequence[dict[str, Tensor]], curve: list[float]) -> None:
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=setup.lr)
        start = setup.steps - len(main)
        for step, batch in enumerate(main, start=start + 1):
            loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % setup.eval_every == 0:
                curve.append(_accuracy(model, shifted_test, y_test))
        arm = results.arms.setdefault(name, ArmResult(name))
        arm.final.append(curve[-1])
        arm.curves.append(curve)

    def lora(**overrides: Any) -> LoraConfig:
        return LoraConfig(
            r=setup.rank,
            lora_alpha=setup.rank,
            target_modules=["fc1", "fc2"],
            modules_to_save=["head"],
            **overrides,
        )

    def hrp_arm(init: Init) -> None:
        config = HRPConfig(
            preheat_rank=setup.preheat_rank,
            preheat_steps=setup.preheat_steps,
            preheat_lr=setup.lr,
            init=init,
            seed=seed,
        )
        curve: list[float] = []
        taken = [0]

        def preheat_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
            if taken[0] and taken[0] % setup.eval_every == 0:  # the preheat model after taken[0] updates
                curve.append(_accuracy(model, shifted_test, y_test))
            taken[0] += 1
            return loss(model, batch)

        model = hrp_initialize(
            copy.deepcopy(pretrained), lora(), batches[: setup.preheat_steps], config, loss_fn=preheat_loss
        )
        if setup.preheat_steps % setup.eval_every == 0:  # the rank-r init replaces the preheat model here
            curve.append(_accuracy(model, shifted_test, y_test))
        suffix = "" if init == "direction" else " carry-over"
        train(f"HRP R={setup.preheat_rank}{suffix}", model, batches[setup.preheat_steps :], curve)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train("full fine-tuning", copy.deepcopy(pretrained), batches, [])
        train("default LoRA", get_peft_model(copy.deepcopy(pretrained), lora()), batches, [])
        train(
            "PiSSA", get_peft_model(copy.deepcopy(pretrained), lora(init_lora_weights="pissa")), batches, []
        )
        hrp_arm("direction")
        hrp_arm("carry_over")


def run_digits(
    setup: DigitsSetup, seeds: Sequence[int], *, progress: Callable[[Sequence[int]], Any] = iter
) -> DigitsResults:
    """Run experiment B for every seed (the data split, pretraining, rotation and batches follow the seed).

    An HRP curve's points during the preheat measure the rank-R preheat model.
    """
    if not seeds:
        raise ConfigError("`seeds` must name at least one seed")
    results = DigitsResults(
        setup=setup, seeds=list(seeds), pretrained_accuracy=[], shifted_accuracy=[], arms={}
    )
    for seed in progress(seeds):
        _digits_seed(setup, seed, results)
    return results
