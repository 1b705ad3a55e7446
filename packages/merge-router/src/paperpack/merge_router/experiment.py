"""The small experiment behind the demo: four experts of one tiny Llama, merged six ways, and Mediator.

Four synthetic tasks on five random digits, each with its own prompt format (its own marker words), answered
by one digit: the first digit, the last digit, the count of a given digit, and the first digit plus one mod 10
(which conflicts with "first" on the same input position). A tiny Llama (4 decoder layers) is trained
briefly on a mixture of all four (the shared base), then fine-tuned on each task alone (the four experts).
Every arm is scored by exact match of the answer under teacher forcing (every answer token is the argmax),
on held-out examples of each task:

- each expert alone on every task, and the oracle ensemble (each task's expert on its own task, four models);
- plain averaging, task arithmetic, TIES and TSV-M (paperpack-r-tsvm's merges);
- Mediator (:func:`~paperpack.merge_router.compile_mediator` with the given config), each example routed on
  its prompt, then scored with that routing;
- the paper note's ablations of the main Mediator arm: the same number of decoder blocks chosen at random
  instead of by conflict (``random_draws`` draws per seed), other sparse densities on the same blocks
  (``densities``), and out-of-distribution prompts (each task asked in another task's words: mixed markers)
  routed softly (the uncertainty mix, as the config decides) against hard (top-1 always) (``ood``).

Everything runs offline on the CPU in minutes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from paperpack.merge_router.config import MediatorConfig

__all__ = [
    "BASELINE_MERGES",
    "DEFAULT_MEDIATORS",
    "MAIN_MEDIATOR",
    "TASK_NAMES",
    "ArmResult",
    "ExperimentConfig",
    "ExperimentResult",
    "OODResult",
    "density_arm",
    "make_examples",
    "random_arm",
    "run_experiment",
]

TASK_NAMES = ("first", "last", "count", "successor")
#: The r-tsvm merges compared with Mediator: arm name -> (method, parameters).
BASELINE_MERGES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain averaging": ("linear", {}),
    "task arithmetic": ("task_arithmetic", {}),
    "TIES": ("ties", {}),
    "TSV-M": ("tsv_m", {}),
}


#: The Mediator arms of the demo: the package defaults, half of the decoder blocks routed at the default
#: density, and every block routed with dense sparse experts (δ = 1: an upper bound of routing).
DEFAULT_MEDIATORS: dict[str, MediatorConfig] = {
    "Mediator (defaults)": MediatorConfig(),
    "Mediator (top half of blocks, δ = 0.1)": MediatorConfig(threshold_mode="topk", threshold=0.5),
    "Mediator (every block, δ = 1)": MediatorConfig(threshold_mode="topk", threshold=1.0, sparse_density=1.0),
}


#: The Mediator arm the ablations vary (the demo's main arm).
MAIN_MEDIATOR = "Mediator (top half of blocks, δ = 0.1)"


def density_arm(density: float) -> str:
    """The name of the density-sweep arm: the main arm's blocks with sparse density ``density``."""
    return f"Mediator (top half of blocks, δ = {density:g})"


def random_arm() -> str:
    """The name of the random-layer arm: as many blocks as the main arm routes, chosen at random."""
    return "Mediator (random blocks, same count, δ = 0.1)"


#: Out-of-distribution prompt formats: each task asked in another task's words (mixed markers).
_OOD_FORMATS = {
    "first": "tell me the first digit in [ {text} ] ->",
    "last": "what is the final digit of : {text} ?",
    "count": "add up how many times {target} occurs in : {text} =",
    "successor": "how many is one plus the leading digit mod ten ( {text} ) ?",
}


def make_examples(task: str, count: int, seed: int, *, ood: bool = False) -> list[tuple[str, str]]:
    """``count`` (prompt, answer) pairs of ``task``; the answer starts with a space.

    With ``ood`` the prompts use the task's out-of-distribution format (another task's marker words).
    """
    rng = random.Random(f"{task}-{seed}")
    examples = []
    for _ in range(count):
        digits = [rng.randrange(10) for _ in range(5)]
        text = " ".join(map(str, digits))
        if ood and task in _OOD_FORMATS:
            target = rng.choice(digits) if task == "count" else 0
            answer = {
                "first": digits[0],
                "last": digits[-1],
                "count": digits.count(target),
                "successor": (digits[0] + 1) % 10,
            }[task]
            examples.append((_OOD_FORMATS[task].format(text=text, target=target), f" {answer}"))
        elif task == "first":
            examples.append((f"what is the first digit of : {text} ?", f" {digits[0]}"))
        elif task == "last":
            examples.append((f"tell me the final digit in [ {text} ] ->", f" {digits[-1]}"))
        elif task == "count":
            target = rng.choice(digits)
            examples.append(
                (f"how many times does {target} occur in ( {text} ) ?", f" {digits.count(target)}")
            )
        elif task == "successor":
            examples.append((f"add one mod ten to the leading digit : {text} =", f" {(digits[0] + 1) % 10}"))
        else:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASK_NAMES)}")
    return examples


@dataclass
class ExperimentConfig:
    """The experiment's sizes; the defaults are the demo's full scale.

    Attributes:
        seeds: one run per seed (data, initialisation, router).
        pretrain_steps: steps of the base on the mixture of all tasks.
        finetune_steps: steps of each expert on its task.
        batch_size: examples per step.
        learning_rate: AdamW learning rate (base and experts).
        train_examples: examples per task for training (and, the first 64, for the router's prompts).
        test_examples: held-out examples per task.
        num_layers: decoder layers of the tiny Llama.
        hidden_size: its width.
        mediators: arm name -> the Mediator config compiled in every run (its seed is set per run).
        densities: the density sweep: extra arms routing the same blocks as :data:`MAIN_MEDIATOR` with these
            sparse densities (empty: none).
        random_draws: random-layer arms per seed: each routes as many decoder blocks as
            :data:`MAIN_MEDIATOR`, drawn at random (0: none).
        ood: score :data:`MAIN_MEDIATOR` on out-of-distribution prompts, soft against hard routing.
    """

    seeds: Sequence[int] = (0, 1, 2)
    pretrain_steps: int = 150
    finetune_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    train_examples: int = 2000
    test_examples: int = 100
    num_layers: int = 4
    hidden_size: int = 64
    mediators: dict[str, MediatorConfig] = field(default_factory=lambda: dict(DEFAULT_MEDIATORS))
    densities: Sequence[float] = (0.05, 0.3)
    random_draws: int = 3
    ood: bool = True


@dataclass
class ArmResult:
    """One arm of one seed: exact-match accuracy per task, bytes on disk, and (Mediator) routing accuracy."""

    arm: str
    seed: int
    accuracy: dict[str, float]
    storage_bytes: int
    routing_accuracy: float | None = None

    @property
    def mean_accuracy(self) -> float:
        """The mean over the tasks."""
        return sum(self.accuracy.values()) / len(self.accuracy)


@dataclass
class OODResult:
    """:data:`MAIN_MEDIATOR` on one seed's out-of-distribution prompts (accuracy per task).

    Attributes:
        seed: the run.
        soft: routed as the config decides (the top-k mix when the router's confidence is low).
        hard: always the router's top-1 expert alone.
        oracle: each task's expert alone on its out-of-distribution prompts.
        mixed_fraction: the fraction of the prompts the soft rule mixed (confidence below the threshold).
        mean_confidence: the router's mean max p on these prompts.
        top1_accuracy: the fraction whose top-1 expert is the prompt's task.
    """

    seed: int
    soft: dict[str, float]
    hard: dict[str, float]
    oracle: dict[str, float]
    mixed_fraction: float
    mean_confidence: float
    top1_accuracy: float


@dataclass
class ExperimentResult:
    """Every arm of every seed, d_l per unit of each seed, the routed units per (Mediator arm, seed), OOD."""

    arms: list[ArmResult]
    conflicts: dict[int, dict[str, float]]
    routed_units: dict[tuple[str, int], list[str]]
    model_bytes: int
    ood: list[OODResult] = field(default_factory=list)

    def arm(self, name: str) -> list[ArmResult]:
        """The results of arm ``name``, one per seed."""
        return [result for result in self.arms if result.arm == name]

    def names(self) -> list[str]:
        """The arms, in the order they were run."""
        return list(dict.fromkeys(result.arm for result in self.arms))


def _train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
    *,
    steps: int,
    config: ExperimentConfig,
    seed: int,
) -> None:
    from paperpack.core.data import CausalLMCollator, tokenize_prompt_completions

    rows = tokenize_prompt_completions(tokenizer, [p for p, _ in examples], [a for _, a in examples])
    collate = CausalLMCollator(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = collate(rng.sample(rows, config.batch_size))
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def _score(
    logits_of: Callable[[dict[str, Tensor], list[str]], Tensor],
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
) -> float:
    """Exact match under teacher forcing: every answer token (and the end of sequence) is the argmax."""
    from paperpack.core.data import CausalLMCollator, tokenize_prompt_completions

    rows = tokenize_prompt_completions(tokenizer, [p for p, _ in examples], [a for _, a in examples])
    batch = CausalLMCollator(tokenizer)(rows)
    with torch.no_grad():
        logits = logits_of(
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
            [p for p, _ in examples],
        )
    predicted = logits[:, :-1].argmax(-1)
    labels = batch["labels"][:, 1:]
    scored = labels != -100
    correct = ((predicted == labels) | ~scored).all(dim=1)
    return float(correct.float().mean())


def _scores(
    logits_of: Callable[[dict[str, Tensor], list[str]], Tensor],
    *,
    tokenizer: Any,
    test: Mapping[str, Sequence[tuple[str, str]]],
) -> dict[str, float]:
    return {task: _score(logits_of, tokenizer, test[task]) for task in TASK_NAMES}


def _model_logits(model: Any) -> Callable[[dict[str, Tensor], list[str]], Tensor]:
    def logits_of(batch: dict[str, Tensor], prompts: list[str]) -> Tensor:
        return model(**batch).logits  # type: ignore[no-any-return]

    return logits_of


def _routed_logits(mediator: Any, hard: bool = False) -> Callable[[dict[str, Tensor], list[str]], Tensor]:
    """Logits of the Mediator with each example routed on its prompt (``hard``: the top-1 expert alone)."""
    from paperpack.merge_router.router import Routing

    def logits_of(batch: dict[str, Tensor], prompts: list[str]) -> Tensor:
        routing = mediator.route(prompts)
        if hard:
            routing = [Routing.forced(choice.experts[0]) for choice in routing]
        logits: Tensor = mediator(**batch, routing=routing)
        return logits

    return logits_of


def _mediator_arm(
    arm: str,
    seed: int,
    mediator: Any,
    *,
    storage: int,
    test: Mapping[str, Sequence[tuple[str, str]]],
    scores: Callable[[Callable[[dict[str, Tensor], list[str]], Tensor]], dict[str, float]],
) -> ArmResult:
    hits = [
        routing.experts[0] == task
        for task in TASK_NAMES
        for routing in mediator.route([prompt for prompt, _ in test[task]])
    ]
    return ArmResult(
        arm, seed, scores(_routed_logits(mediator)), storage, routing_accuracy=sum(hits) / len(hits)
    )


def _ood_result(
    seed: int,
    mediator: Any,
    experts: Mapping[str, Any],
    *,
    tokenizer: Any,
    test: Mapping[str, Sequence[tuple[str, str]]],
) -> OODResult:
    """The main Mediator on out-of-distribution prompts: soft against hard routing, and the oracle."""
    scores = functools.partial(_scores, tokenizer=tokenizer, test=test)
    routings = {task: mediator.route([prompt for prompt, _ in test[task]]) for task in TASK_NAMES}
    every = [routing for task in TASK_NAMES for routing in routings[task]]
    return OODResult(
        seed=seed,
        soft=scores(_routed_logits(mediator)),
        hard=scores(_routed_logits(mediator, hard=True)),
        oracle={task: _score(_model_logits(experts[task]), tokenizer, test[task]) for task in TASK_NAMES},
        mixed_fraction=sum(len(routing.experts) > 1 for routing in every) / len(every),
        mean_confidence=sum(routing.confidence for routing in every) / len(every),
        top1_accuracy=sum(routing.experts[0] == task for task in TASK_NAMES for routing in routings[task])
        / len(every),
    )


def _ablations(
    config: ExperimentConfig, seed: int, main: list[str], blocks: list[str]
) -> list[tuple[str, MediatorConfig, list[str]]]:
    """(arm, config, routed units) of the density sweep and the random-layer draws of one seed."""
    main_config = dataclasses.replace(config.mediators[MAIN_MEDIATOR], seed=seed)
    arms = [
        (density_arm(density), dataclasses.replace(main_config, sparse_density=density), main)
        for density in config.densities
    ]
    rng = random.Random(f"random-blocks-{seed}")
    for _ in range(config.random_draws):
        drawn = set(rng.sample(blocks, len(main)))
        arms.append((random_arm(), main_config, [block for block in blocks if block in drawn]))
    return arms


def _mediator_arms(
    config: ExperimentConfig,
    seed: int,
    root: Path,
    prompts: Mapping[str, list[str]],
    *,
    experts: Mapping[str, Any],
    tokenizer: Any,
    test: Mapping[str, Sequence[tuple[str, str]]],
    ood_test: Mapping[str, Sequence[tuple[str, str]]],
    scores: Callable[[Callable[[dict[str, Tensor], list[str]], Tensor]], dict[str, float]],
) -> ExperimentResult:
    """Compile and score every Mediator arm of one seed (and the main arm's ablations); model_bytes = 0."""
    from paperpack.merge_router.compile import compile_mediator
    from paperpack.merge_router.model import MediatorModel
    from paperpack.merge_router.units import in_block

    found = ExperimentResult([], {}, {}, 0)
    inputs = (root / "base", {task: root / task for task in TASK_NAMES}, prompts)
    runs: list[tuple[str, MediatorConfig, list[str] | None]] = [
        (arm, dataclasses.replace(mediator_config, seed=seed), None)
        for arm, mediator_config in config.mediators.items()
    ]
    index = 0
    while index < len(runs):
        arm, mediator_config, units = runs[index]
        folder = root / f"mediator-{index}"
        report = compile_mediator(*inputs, mediator_config, folder, routed_units=units)
        found.conflicts[seed] = report.conflicts
        draw = sum(name == arm for name, _, _ in runs[:index])
        found.routed_units[(arm if not draw else f"{arm}, draw {draw + 1}", seed)] = report.routed_units
        mediator = MediatorModel.from_pretrained(folder, device="cpu")
        found.arms.append(
            _mediator_arm(arm, seed, mediator, storage=report.storage_bytes, test=test, scores=scores)
        )
        if arm == MAIN_MEDIATOR and units is None:
            blocks = [unit for unit in report.conflicts if in_block(unit)]
            runs.extend(_ablations(config, seed, report.routed_units, blocks))
            if config.ood:
                found.ood.append(_ood_result(seed, mediator, experts, tokenizer=tokenizer, test=ood_test))
        shutil.rmtree(folder)
        index += 1
    return found


def run_experiment(
    config: ExperimentConfig, work_dir: Path, *, progress: Callable[[Any], Any] | None = None
) -> ExperimentResult:
    """Run every arm for every seed; model folders go to ``work_dir`` (removed at the end).

    Args:
        config: the sizes and the Mediator config.
        work_dir: a folder for the base, expert and Mediator folders (created; deleted when done).
        progress: wraps the iterable of seeds (a progress bar), or None.
    """
    from paperpack.core.hf import tiny_causal_lm
    from paperpack.r_tsvm import merge_state_dicts

    arms: list[ArmResult] = []
    conflicts: dict[int, dict[str, float]] = {}
    routed: dict[tuple[str, int], list[str]] = {}
    ood: list[OODResult] = []
    model_bytes = 0
    seeds = list(config.seeds)
    work_dir.mkdir(parents=True, exist_ok=False)
    try:
        for seed in progress(seeds) if progress else seeds:
            root = work_dir / f"seed-{seed}"
            base, tokenizer = tiny_causal_lm(
                num_layers=config.num_layers, hidden_size=config.hidden_size, seed=seed
            )
            train = {task: make_examples(task, config.train_examples, seed) for task in TASK_NAMES}
            test = {task: make_examples(task, config.test_examples, 10_000 + seed) for task in TASK_NAMES}
            ood_test = {
                task: make_examples(task, config.test_examples, 20_000 + seed, ood=True)
                for task in TASK_NAMES
            }
            mixture = [example for task in TASK_NAMES for example in train[task]]
            _train(base, tokenizer, mixture, steps=config.pretrain_steps, config=config, seed=seed)
            base.save_pretrained(root / "base")
            tokenizer.save_pretrained(root / "base")
            model_bytes = sum(path.stat().st_size for path in (root / "base").glob("*.safetensors"))
            experts = {}
            for index, task in enumerate(TASK_NAMES):
                expert = copy.deepcopy(base)
                _train(
                    expert,
                    tokenizer,
                    train[task],
                    steps=config.finetune_steps,
                    config=config,
                    seed=seed * 100 + index + 1,
                )
                expert.save_pretrained(root / task)
                experts[task] = expert

            scores = functools.partial(_scores, tokenizer=tokenizer, test=test)

            expert_scores = {task: scores(_model_logits(model)) for task, model in experts.items()}
            for task in TASK_NAMES:
                arms.append(ArmResult(f"{task} expert alone", seed, expert_scores[task], model_bytes))
            oracle = {task: expert_scores[task][task] for task in TASK_NAMES}
            arms.append(ArmResult("oracle ensemble (4 experts)", seed, oracle, len(TASK_NAMES) * model_bytes))

            base_state = base.state_dict()
            states = [experts[task].state_dict() for task in TASK_NAMES]
            for arm, (method, params) in BASELINE_MERGES.items():
                merged: Any = copy.deepcopy(base)
                merged.load_state_dict(merge_state_dicts(method, base_state, states, **params))
                arms.append(ArmResult(arm, seed, scores(_model_logits(merged.eval())), model_bytes))

            prompts = {task: [prompt for prompt, _ in train[task][:64]] for task in TASK_NAMES}
            found = _mediator_arms(
                config,
                seed,
                root,
                prompts,
                experts=experts,
                tokenizer=tokenizer,
                test=test,
                ood_test=ood_test,
                scores=scores,
            )
            arms.extend(found.arms)
            conflicts.update(found.conflicts)
            routed.update(found.routed_units)
            ood.extend(found.ood)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return ExperimentResult(arms, conflicts, routed, model_bytes, ood)


def summary(result: ExperimentResult) -> dict[str, Mapping[str, float]]:
    """Per arm: the mean over seeds of each task's accuracy, the mean accuracy and the storage in bytes."""
    table: dict[str, Mapping[str, float]] = {}
    for name in result.names():
        runs = result.arm(name)
        row = {task: sum(run.accuracy[task] for run in runs) / len(runs) for task in TASK_NAMES}
        row["mean"] = sum(run.mean_accuracy for run in runs) / len(runs)
        row["storage_bytes"] = sum(run.storage_bytes for run in runs) / len(runs)
        table[name] = row
    return table
