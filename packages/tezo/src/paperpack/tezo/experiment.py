"""The tiny-scale experiment: zeroth-order fine-tuning of a pretrained tiny Llama on a related task.

Task A (pretraining, AdamW with backpropagation): a review is ``<s> review w1 … w6 →`` with six words drawn
from a positive, a negative and a neutral pool; the answer token is ``yes`` when positive words outnumber
negative ones, else ``no``. Task B (zeroth-order fine-tuning): the same reviews answered with two label
tokens the model never produced (a new verbalizer, as in MeZO's prompt-based fine-tuning), trained with the
two-way cross-entropy over the label tokens. Token ids are made in code; the model is ``tiny_causal_lm()``
with tied embeddings.

Every method gets the same learning-rate grid density: three values half a decade apart, each window placed
around the method's scale (found in a pilot run on seed 0; SGD on TeZO's unscaled rank-8 directions needs a
smaller η than MeZO-SGD). The value with the lowest validation loss on the first seed is used for every seed.

Examples:
    >>> from paperpack.tezo.experiment import MethodSpec, run_experiment
    >>> results = run_experiment(
    ...     methods=[MethodSpec("TeZO-SGD", "tezo_sgd", rank=2, grid=(1e-4,))],
    ...     seeds=[0], steps=2, pretrain_steps=2,
    ... )
    >>> run = results.method("TeZO-SGD").runs[0]
    >>> len(run.losses), run.state_bytes > 0
    (2, True)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn import functional
from transformers import LlamaForCausalLM

from paperpack.core.hf import tiny_causal_lm
from paperpack.tezo.choices import Method
from paperpack.tezo.optim import ZOOptimizer, zo_state_bytes

__all__ = [
    "DEFAULT_METHODS",
    "ExperimentResults",
    "MethodResult",
    "MethodSpec",
    "Run",
    "run_experiment",
]

T = TypeVar("T")
Progress = Callable[[Iterable[Any], str], Iterator[Any]]

# Token ids of the synthetic task (all below the tiny tokenizer's vocabulary size, above its special tokens).
_BOS = 1
_POSITIVE = tuple(range(20, 26))
_NEGATIVE = tuple(range(30, 36))
_NEUTRAL = tuple(range(40, 52))
_REVIEW, _ARROW = 62, 63
_LABELS_A = (61, 60)  # "no", "yes"
_LABELS_B = (70, 71)  # a verbalizer never seen in pretraining
_WORDS = 6
_BATCH = 16
_EPS = 1e-3
_LOZO_INTERVAL = 50


@dataclass(frozen=True)
class MethodSpec:
    """One zeroth-order method as the experiment runs it.

    Attributes:
        label: the name in tables, e.g. ``"TeZO-Adam (r=8)"``.
        method: the :class:`~paperpack.tezo.ZOOptimizer` method.
        rank: r of TeZO and LOZO.
        grid: the learning rates tried on the first seed.
    """

    label: str
    method: Method
    rank: int
    grid: tuple[float, ...]


DEFAULT_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("MeZO-SGD", "mezo_sgd", 8, (3e-4, 1e-3, 3e-3)),
    MethodSpec("MeZO-Adam", "mezo_adam", 8, (1e-3, 3e-3, 1e-2)),
    MethodSpec("TeZO-SGD (r=8)", "tezo_sgd", 8, (1e-5, 3e-5, 1e-4)),
    MethodSpec("TeZO-Adam (r=4)", "tezo_adam", 4, (1e-3, 3e-3, 1e-2)),
    MethodSpec("TeZO-Adam (r=8)", "tezo_adam", 8, (1e-3, 3e-3, 1e-2)),
    MethodSpec("LOZO (r=2, ν=50)", "lozo", 2, (1e-4, 3e-4, 1e-3)),
)
"""The demo's methods and learning-rate windows."""


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of one method at one learning rate and seed.

    Attributes:
        lr: the learning rate η.
        seed: the seed of the zeroth-order draws.
        losses: the training loss of every step.
        val_loss: the validation loss at the end.
        test_loss: the test loss at the end.
        test_accuracy: the test accuracy at the end.
        step_ms: the mean wall time of a step, in milliseconds.
        state_bytes: the optimizer's persistent state (:func:`~paperpack.tezo.zo_state_bytes`).
    """

    lr: float
    seed: int
    losses: tuple[float, ...]
    val_loss: float
    test_loss: float
    test_accuracy: float
    step_ms: float
    state_bytes: int


@dataclass
class MethodResult:
    """A method's runs: the grid on the first seed, then the chosen learning rate on every seed.

    Attributes:
        spec: the method.
        grid: the first seed's run at every learning rate of the grid.
        runs: the runs at the chosen learning rate, one per seed (the first is the grid's).
    """

    spec: MethodSpec
    grid: list[Run] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def lr(self) -> float:
        """The chosen learning rate: the grid's lowest validation loss."""
        return self.runs[0].lr

    def values(self, name: str) -> list[float]:
        """One value per seed of a :class:`Run` field, e.g. ``values("test_accuracy")``."""
        return [float(getattr(run, name)) for run in self.runs]


@dataclass
class ExperimentResults:
    """What :func:`run_experiment` measured.

    Attributes:
        methods: one result per method, in the order given.
        seeds: the seeds of the fine-tuning runs.
        steps: zeroth-order steps per run.
        before_loss: the task-B test loss of the pretrained model, before fine-tuning.
        before_accuracy: its task-B test accuracy.
        weights_bytes: the bytes of the model's weights.
    """

    methods: list[MethodResult]
    seeds: list[int]
    steps: int
    before_loss: float
    before_accuracy: float
    weights_bytes: int

    def method(self, label: str) -> MethodResult:
        """The result of the method labelled ``label``."""
        for result in self.methods:
            if result.spec.label == label:
                return result
        raise KeyError(f"no method {label!r}; methods: {[result.spec.label for result in self.methods]}")

    def memory_ratio(self, label: str) -> float:
        """(weights + the method's persistent state) / weights."""
        return (self.weights_bytes + self.method(label).runs[0].state_bytes) / self.weights_bytes


def _reviews(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` reviews (token ids, shape count × 9) and their labels (1: positive)."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    major = torch.randint(2, 4, (count,), generator=generator)
    minor = (torch.rand(count, generator=generator) * major).long()  # 0 ≤ minor < major
    slots = torch.arange(_WORDS).expand(count, _WORDS)
    positive = torch.tensor(_POSITIVE)[torch.randint(0, len(_POSITIVE), (count, _WORDS), generator=generator)]
    negative = torch.tensor(_NEGATIVE)[torch.randint(0, len(_NEGATIVE), (count, _WORDS), generator=generator)]
    neutral = torch.tensor(_NEUTRAL)[torch.randint(0, len(_NEUTRAL), (count, _WORDS), generator=generator)]
    is_major = slots < major[:, None]
    is_minor = (slots >= major[:, None]) & (slots < (major + minor)[:, None])
    major_words = torch.where(labels[:, None] == 1, positive, negative)
    minor_words = torch.where(labels[:, None] == 1, negative, positive)
    words = torch.where(is_major, major_words, torch.where(is_minor, minor_words, neutral))
    order = torch.argsort(torch.rand(count, _WORDS, generator=generator), dim=1)
    words = torch.gather(words, 1, order)
    prefix = torch.tensor([_BOS, _REVIEW]).expand(count, 2)
    suffix = torch.full((count, 1), _ARROW)
    return torch.cat([prefix, words, suffix], dim=1), labels


def _label_logits(model: LlamaForCausalLM, ids: Tensor, labels: tuple[int, int]) -> Tensor:
    logits: Tensor = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1, :]
    return logits[:, list(labels)]


def _evaluate(model: LlamaForCausalLM, ids: Tensor, targets: Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = _label_logits(model, ids, _LABELS_B)
    loss = float(functional.cross_entropy(logits, targets))
    accuracy = float((logits.argmax(-1) == targets).float().mean())
    return loss, accuracy


def _pretrain(seed: int, steps: int) -> LlamaForCausalLM:
    """Task A with AdamW and backpropagation."""
    model, _ = tiny_causal_lm(vocab_size=300, tie_word_embeddings=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    ids, targets = _reviews(4096, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(ids), (32,), generator=generator)
        loss = functional.cross_entropy(_label_logits(model, ids[batch], _LABELS_A), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def _finetune(
    base: LlamaForCausalLM,
    spec: MethodSpec,
    lr: float,
    *,
    seed: int,
    steps: int,
    data: dict[str, tuple[Tensor, Tensor]],
) -> Run:
    """Task B with one zeroth-order method, batch 16."""
    model = copy.deepcopy(base).eval()
    optimizer = ZOOptimizer(
        model.parameters(),
        method=spec.method,
        lr=lr,
        eps=_EPS,
        rank=spec.rank,
        seed=seed,
        lozo_interval=_LOZO_INTERVAL,
    )
    ids, targets = data["train"]
    generator = torch.Generator().manual_seed(seed + 1)
    losses = []
    started = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(0, len(ids), (_BATCH,), generator=generator)

        def closure(batch: Tensor = batch) -> Tensor:
            return functional.cross_entropy(_label_logits(model, ids[batch], _LABELS_B), targets[batch])

        loss = optimizer.step(closure)
        losses.append(float(loss) if loss is not None else math.nan)
    step_ms = (time.perf_counter() - started) / steps * 1000
    val_loss, _ = _evaluate(model, *data["val"])
    test_loss, test_accuracy = _evaluate(model, *data["test"])
    return Run(
        lr, seed, tuple(losses), val_loss, test_loss, test_accuracy, step_ms, zo_state_bytes(optimizer)
    )


def _no_progress(iterable: Iterable[T], desc: str) -> Iterator[T]:
    return iter(iterable)


def run_experiment(
    *,
    methods: Sequence[MethodSpec] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 150,
    pretrain_steps: int = 300,
    full_grid: bool = True,
    progress: Progress = _no_progress,
) -> ExperimentResults:
    """Pretrain on task A, then fine-tune on task B with every method; measure loss, accuracy, memory, time.

    Args:
        methods: the methods and their learning-rate grids.
        seeds: the seeds of the fine-tuning runs; the first also seeds the pretraining, the data and the
            learning-rate choice.
        steps: zeroth-order steps per run (batch 16, ρ = 1e-3).
        pretrain_steps: AdamW steps on task A.
        full_grid: try every learning rate of each grid; else only the middle one.
        progress: wraps an iterable with a description (``DemoContext.progress``-like).

    Returns:
        The runs of every method, with the pretrained model's task-B loss and accuracy.
    """
    first = seeds[0]
    base = _pretrain(first, steps=pretrain_steps)
    generator = torch.Generator().manual_seed(first + 1000)
    data = {
        split: _reviews(size, generator) for split, size in (("train", 2048), ("val", 512), ("test", 1024))
    }
    before_loss, before_accuracy = _evaluate(base, *data["test"])
    results = [MethodResult(spec) for spec in methods]
    jobs = [
        (result, lr)
        for result in results
        for lr in (result.spec.grid if full_grid else result.spec.grid[len(result.spec.grid) // 2 :][:1])
    ]
    for result, lr in progress(jobs, "learning-rate grid"):
        result.grid.append(_finetune(base, result.spec, lr, seed=first, steps=steps, data=data))
    for result in results:
        result.runs = [min(result.grid, key=lambda run: run.val_loss)]
    extra = [(result, seed) for result in results for seed in seeds[1:]]
    for result, seed in progress(extra, "more seeds"):
        result.runs.append(_finetune(base, result.spec, result.lr, seed=seed, steps=steps, data=data))
    return ExperimentResults(
        methods=results,
        seeds=list(seeds),
        steps=steps,
        before_loss=before_loss,
        before_accuracy=before_accuracy,
        weights_bytes=sum(p.numel() * p.element_size() for p in base.parameters()),
    )
