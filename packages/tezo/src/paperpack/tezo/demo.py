"""The ``paperpack demo`` comparison: zeroth-order fine-tuning of a tiny Llama on a related task.

Task A (pretraining, AdamW with backpropagation): a review is ``<s> review w1 … w6 →`` with six words drawn
from a positive, a negative and a neutral pool; the answer token is ``yes`` when positive words outnumber
negative ones, else ``no``. Task B (zeroth-order fine-tuning): the same reviews answered with two label
tokens the model never produced (a new verbalizer, as in MeZO's prompt-based fine-tuning), trained with the
two-way cross-entropy over the label tokens. Token ids are made in code; the model is ``tiny_causal_lm()``
with tied embeddings.

Every method gets the same learning-rate grid density: three values half a decade apart, each window placed
around the method's scale (found in a pilot run on seed 0; SGD on TeZO's unscaled rank-8 directions needs a
smaller η than MeZO-SGD). The value with the lowest validation loss on the first seed is used for every seed.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional
from transformers import LlamaForCausalLM

from paperpack.core.demo import Claim, DemoContext, DemoReport, DemoTable
from paperpack.core.hf import tiny_causal_lm
from paperpack.tezo.optim import ZOOptimizer, zo_state_bytes

__all__ = ["run_demo"]

# Token ids of the synthetic task (all below the tiny tokenizer's vocabulary size, above its special tokens).
_BOS = 1
_POSITIVE = tuple(range(20, 26))
_NEGATIVE = tuple(range(30, 36))
_NEUTRAL = tuple(range(40, 52))
_REVIEW, _ARROW = 62, 63
_LABELS_A = (61, 60)  # "no", "yes"
_LABELS_B = (70, 71)  # a verbalizer never seen in pretraining
_WORDS = 6


@dataclass(frozen=True)
class _Method:
    label: str
    method: str
    rank: int
    grid: tuple[float, float, float]


_METHODS = (
    _Method("MeZO-SGD", "mezo_sgd", 8, (3e-4, 1e-3, 3e-3)),
    _Method("MeZO-Adam", "mezo_adam", 8, (1e-3, 3e-3, 1e-2)),
    _Method("TeZO-SGD (r=8)", "tezo_sgd", 8, (1e-5, 3e-5, 1e-4)),
    _Method("TeZO-Adam (r=4)", "tezo_adam", 4, (1e-3, 3e-3, 1e-2)),
    _Method("TeZO-Adam (r=8)", "tezo_adam", 8, (1e-3, 3e-3, 1e-2)),
    _Method("LOZO (r=2, ν=50)", "lozo", 2, (1e-4, 3e-4, 1e-3)),
)


@dataclass
class _Run:
    lr: float
    losses: list[float]
    val_loss: float
    test_loss: float
    test_accuracy: float
    step_ms: float
    state_bytes: int


@dataclass
class _Result:
    spec: _Method
    runs: list[_Run] = field(default_factory=list)


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
    spec: _Method,
    lr: float,
    *,
    seed: int,
    steps: int,
    data: dict[str, tuple[Tensor, Tensor]],
) -> _Run:
    """Task B with one zeroth-order method, batch 16."""
    model = copy.deepcopy(base).eval()
    optimizer = ZOOptimizer(
        model.parameters(), method=spec.method, lr=lr, eps=1e-3, rank=spec.rank, seed=seed, lozo_interval=50
    )
    ids, targets = data["train"]
    generator = torch.Generator().manual_seed(seed + 1)
    losses = []
    started = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(0, len(ids), (16,), generator=generator)

        def closure(batch: Tensor = batch) -> Tensor:
            return functional.cross_entropy(_label_logits(model, ids[batch], _LABELS_B), targets[batch])

        loss = optimizer.step(closure)
        losses.append(float(loss) if loss is not None else math.nan)
    step_ms = (time.perf_counter() - started) / steps * 1000
    val_loss, _ = _evaluate(model, *data["val"])
    test_loss, test_accuracy = _evaluate(model, *data["test"])
    return _Run(lr, losses, val_loss, test_loss, test_accuracy, step_ms, zo_state_bytes(optimizer))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _plot(results: list[_Result], path_png: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for result in results:
        curves = torch.tensor([run.losses for run in result.runs])
        mean = curves.mean(0)
        window = max(1, len(mean) // 20)
        smooth = functional.avg_pool1d(mean[None, None], window, stride=1)[0, 0]
        axes.plot(
            range(window - 1, len(mean)),
            smooth.tolist(),
            label=f"{result.spec.label}, η={result.runs[0].lr:g}",
        )
    axes.set_xlabel("zeroth-order step")
    axes.set_ylabel("train loss (task B, moving average)")
    axes.set_yscale("log")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path_png, dpi=120)


def run_demo(ctx: DemoContext) -> DemoReport:
    """Pretrain on task A, fine-tune on task B with every method, and report loss, accuracy, memory, time."""
    quick = ctx.quick
    seeds = [ctx.seed] if quick else [ctx.seed, ctx.seed + 1, ctx.seed + 2]
    steps = 80 if quick else 150
    base = _pretrain(ctx.seed, steps=150 if quick else 300)
    generator = torch.Generator().manual_seed(ctx.seed + 1000)
    data = {
        split: _reviews(size, generator) for split, size in (("train", 2048), ("val", 512), ("test", 1024))
    }
    before_loss, before_accuracy = _evaluate(base, *data["test"])
    results = [_Result(spec) for spec in _METHODS]
    jobs = [
        (result, lr) for result in results for lr in (result.spec.grid[1:2] if quick else result.spec.grid)
    ]
    for result, lr in ctx.progress(jobs, desc="learning-rate grid"):
        result.runs.append(_finetune(base, result.spec, lr, seed=seeds[0], steps=steps, data=data))
    for result in results:
        result.runs = [min(result.runs, key=lambda run: run.val_loss)]
    extra = [(result, seed) for result in results for seed in seeds[1:]]
    for result, seed in ctx.progress(extra, desc="more seeds"):
        result.runs.append(_finetune(base, result.spec, result.runs[0].lr, seed=seed, steps=steps, data=data))

    by_label = {result.spec.label: result for result in results}
    weights_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    rows: list[list[str | float | int]] = []
    for result in results:
        run0 = result.runs[0]
        rows.append([
            result.spec.label,
            f"{run0.lr:g}",
            _mean_std([run.losses[-1] for run in result.runs]),
            _mean_std([run.test_loss for run in result.runs]),
            _mean_std([run.test_accuracy for run in result.runs]),
            run0.state_bytes,
            f"{(weights_bytes + run0.state_bytes) / weights_bytes:.3f}",
            f"{statistics.mean(run.step_ms for run in result.runs):.1f}",
        ])  # fmt: skip

    def accuracy(label: str) -> float:
        return statistics.mean(run.test_accuracy for run in by_label[label].runs)

    tezo, mezo = by_label["TeZO-Adam (r=8)"], by_label["MeZO-Adam"]
    memory_ratio = (weights_bytes + tezo.runs[0].state_bytes) / (weights_bytes + mezo.runs[0].state_bytes)
    metric = f"task-B test accuracy, mean of {len(seeds)} seed(s)"
    claims = [
        Claim(
            claim="TeZO-Adam's accuracy matches MeZO-Adam's (within 0.02)",
            method="TeZO-Adam (r=8)",
            baselines="MeZO-Adam",
            metric=metric,
            method_value=accuracy("TeZO-Adam (r=8)"),
            baseline_value=accuracy("MeZO-Adam"),
            held=accuracy("TeZO-Adam (r=8)") >= accuracy("MeZO-Adam") - 0.02,
        ),
        Claim(
            claim="TeZO-Adam needs about 35% of MeZO-Adam's memory (weights + state; issue: <= 40%)",
            method="TeZO-Adam (r=8)",
            baselines="MeZO-Adam",
            metric="(weights + persistent state) / MeZO-Adam's",
            method_value=memory_ratio,
            baseline_value=1.0,
            held=memory_ratio <= 0.40,
            note="64-wide matrices make (m+n)·r large next to m·n; the 58M benchmark is closer to the paper",
        ),
        Claim(
            claim="TeZO-SGD may trail MeZO-SGD (paper note; reported, not asserted)",
            method="TeZO-SGD (r=8)",
            baselines="MeZO-SGD",
            metric=metric,
            method_value=accuracy("TeZO-SGD (r=8)"),
            baseline_value=accuracy("MeZO-SGD"),
            held=None,
        ),
        Claim(
            claim="LOZO is comparable to TeZO-Adam (reported, not asserted)",
            method="TeZO-Adam (r=8)",
            baselines="LOZO (r=2, ν=50)",
            metric=metric,
            method_value=accuracy("TeZO-Adam (r=8)"),
            baseline_value=accuracy("LOZO (r=2, ν=50)"),
            held=None,
        ),
    ]
    plot = ctx.output_dir / "tezo_loss_curves.png"
    _plot(results, str(plot))
    table = DemoTable(
        title="Zeroth-order fine-tuning on task B (tiny Llama, 150k parameters, batch 16, ρ = 1e-3)",
        columns=[
            "method", "η (chosen)", "final train loss", "test loss", "test accuracy", "state bytes",
            "memory / weights", "step ms",
        ],
        rows=rows,
    )  # fmt: skip
    notes = [
        f"Before fine-tuning: test loss {before_loss:.3f}, accuracy {before_accuracy:.3f} on task B.",
        f"{steps} zeroth-order steps per run; η grid of three values half a decade apart per method "
        + ("(quick mode: the middle value only)" if quick else "(chosen on seed 0 by validation loss)"),
        "Step times include Python overhead that dominates at this size; see the benchmark for a 58M model.",
    ]
    return DemoReport(title="TeZO vs MeZO and LOZO", claims=claims, tables=[table], plots=[plot], notes=notes)
