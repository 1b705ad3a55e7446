"""The tiny-scale experiment behind ``paperpack demo --only o1-pruner``: shorter traces for adding numbers.

A ``tiny_causal_lm()`` is taught by SFT to add a few small numbers with a running-sum trace padded by a
random number of redundant ``check`` lines (each may copy the sum wrongly, with a small probability, so
longer traces are a little less accurate: the "length disharmony" the paper starts from). That model is the
reference π_ref. From it: pre-sampling (K per problem), then five arms evaluated greedily on held-out
problems: the reference, SFT on the two shortest correct samples per problem, DPO (TRL's ``DPOTrainer``)
shortest vs longest correct, O1-Pruner with λ = 0, and O1-Pruner with the configured λ.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from paperpack.core.hf import tiny_causal_lm, training_args
from paperpack.o1_pruner.collator import O1PrunerCollator
from paperpack.o1_pruner.config import O1PrunerConfig
from paperpack.o1_pruner.evaluation import evaluate
from paperpack.o1_pruner.graders import last_number_grader
from paperpack.o1_pruner.metrics import aes
from paperpack.o1_pruner.presampling import presample, training_records
from paperpack.o1_pruner.trainer import O1PrunerTrainer

logger = logging.getLogger(__name__)

__all__ = ["ARMS", "ArmResult", "ExperimentSettings", "SeedResult", "addition_problem", "run_seed"]

ARMS = ("reference", "SFT shortest", "DPO", "O1-Pruner λ=0", "O1-Pruner", "O1-Pruner high λ")
"""The arms in report order: "O1-Pruner" trains with ``ExperimentSettings.lam``, "O1-Pruner high λ" with
``lam_high`` (the λ sweep the paper reports: accuracy and length both rise with λ)."""


@dataclass(frozen=True)
class ExperimentSettings:
    """The experiment's knobs (defaults: the full scale).

    Attributes:
        sft_problems: problems whose padded traces teach the reference.
        sft_steps: SFT steps of the reference (batch 32, cosine schedule).
        sft_learning_rate: its learning rate.
        train_problems: problems pre-sampled for the O1-Pruner stage and the baselines.
        eval_problems: held-out problems, greedy evaluation.
        num_presamples: K.
        temperature: pre-sampling temperature.
        lam: λ of the O1-Pruner arm (the paper's Marco-o1 setting).
        lam_high: λ of the "O1-Pruner high λ" arm (the paper's QwQ setting).
        epochs: epochs of the O1-Pruner stages and of the SFT-shortest and DPO baselines (1: the paper
            note's small experiment).
        learning_rate: their learning rate.
        terms: how many numbers a problem adds (drawn uniformly from these).
        max_number: the numbers are drawn from 1..max_number.
        max_checks: redundant checks after each step in the reference's data: uniform in 0..max_checks.
        slip: probability that a check line copies the running sum wrongly (and the trace goes on from it).
        jump: probability that a step adds two numbers at once (a shorter trace the model learns less well).
    """

    sft_problems: int = 4000
    sft_steps: int = 600
    sft_learning_rate: float = 3e-3
    train_problems: int = 128
    eval_problems: int = 200
    num_presamples: int = 8
    temperature: float = 1.0
    lam: float = 2.0
    lam_high: float = 5.0
    epochs: int = 1
    learning_rate: float = 2e-4
    terms: tuple[int, ...] = field(default=(3, 4))
    max_number: int = 5
    max_checks: int = 3
    slip: float = 0.03
    jump: float = 0.15


@dataclass(frozen=True)
class ArmResult:
    """One arm's greedy evaluation: accuracy, mean length (tokens) and AES against the reference."""

    accuracy: float
    mean_length: float
    aes: float
    aes_table: float


@dataclass(frozen=True)
class SeedResult:
    """Every arm of one seed, plus what pre-sampling saw (an arm without data stays the reference)."""

    seed: int
    arms: dict[str, ArmResult]
    presample_accuracy: float
    presample_length: float
    sft_samples: int
    dpo_pairs: int
    seconds: float


def addition_problem(
    rng: random.Random,
    *,
    terms: int,
    max_number: int = 9,
    max_checks: int = 0,
    slip: float = 0.0,
    jump: float = 0.0,
) -> dict[str, str]:
    """One problem: its prompt, answer and a running-sum trace with random redundant checks.

    Each step adds the next number to the running sum s (or, with probability ``jump``, the next two at once)
    and is followed by 0..``max_checks`` lines ``check s``, each of which copies s wrongly (by ±1) with
    probability ``slip``; the trace goes on from what it wrote and ends with ``answer s``.

    Examples:
        >>> import random
        >>> from paperpack.o1_pruner.experiment import addition_problem
        >>> p = addition_problem(random.Random(0), terms=3, max_number=5)
        >>> p["prompt"], p["trace"], p["answer"]
        ('add 4 4 1 =', ' s=4 ; s=4+4=8 ; s=8+1=9 ; answer 9', '9')
    """
    numbers = [rng.randint(1, max_number) for _ in range(terms)]
    total = numbers[0]
    steps = [f"s={total}"]
    rest = numbers[1:]
    while rest:
        take = 2 if len(rest) >= 2 and rng.random() < jump else 1
        added, rest = rest[:take], rest[take:]
        new = total + sum(added)
        steps.append(f"s={total}+" + "+".join(map(str, added)) + f"={new}")
        total = new
        for _ in range(rng.randint(0, max_checks)):
            if rng.random() < slip:
                total += rng.choice((-1, 1))
            steps.append(f"check {total}")
    return {
        "prompt": "add " + " ".join(map(str, numbers)) + " =",
        "answer": str(sum(numbers)),
        "trace": " " + " ; ".join(steps) + f" ; answer {total}",
    }


def _problems(seed: int, count: int, settings: ExperimentSettings, *, traces: bool) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        addition_problem(
            rng,
            terms=rng.choice(settings.terms),
            max_number=settings.max_number,
            max_checks=settings.max_checks if traces else 0,
            slip=settings.slip if traces else 0.0,
            jump=settings.jump if traces else 0.0,
        )
        for _ in range(count)
    ]


class _SFTCollator(O1PrunerCollator):
    def __call__(self, records: Any) -> dict[str, torch.Tensor]:
        batch = super().__call__([{**r, "weight": 0.0} for r in records])
        del batch["weight"]
        return batch


def _sft(model: Any, records: list[dict[str, Any]], pad: int, folder: Path, **args: Any) -> None:
    from transformers import Trainer

    settings = {
        "per_device_train_batch_size": 32,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_strategy": "no",
        "remove_unused_columns": False,
        **args,
    }
    Trainer(
        model=model,
        args=training_args(folder, **settings),
        train_dataset=records,
        data_collator=_SFTCollator(pad),
    ).train()


def _dpo(model: Any, tokenizer: Any, pairs: list[dict[str, str]], folder: Path, **args: Any) -> None:
    from datasets import Dataset
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    config = training_args(
        folder,
        cls=DPOConfig,
        per_device_train_batch_size=16,
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        bf16=False,
        **args,
    )
    DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),  # TRL would load a reference from the model's path
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    ).train()


def _pick(dataset_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The SFT-shortest records (2 shortest correct per problem) and the DPO pairs (shortest vs longest)."""
    by_problem: dict[int, list[dict[str, Any]]] = {}
    for line in dataset_rows:
        by_problem.setdefault(line["index"], []).append(line)
    sft, pairs = [], []
    for (line,) in by_problem.values():
        right = sorted((s for s in line["samples"] if s["correct"]), key=lambda s: len(s["token_ids"]))
        sft += [{"prompt_ids": line["prompt_ids"], "completion_ids": s["token_ids"]} for s in right[:2]]
        if len(right) >= 2 and len(right[-1]["token_ids"]) > len(right[0]["token_ids"]):
            pairs.append(
                {"prompt": line["prompt"], "chosen": right[0]["text"], "rejected": right[-1]["text"]}
            )
    return sft, pairs


def run_seed(seed: int, settings: ExperimentSettings) -> SeedResult:
    """Teach a reference, pre-sample, train the five arms and evaluate all six, for one seed."""
    import json
    import time

    started = time.perf_counter()
    sft_data = _problems(seed, settings.sft_problems, settings, traces=True)
    corpus = [p["prompt"] + p["trace"] for p in sft_data[:500]]
    model, tokenizer = tiny_causal_lm(seed=seed, corpus=corpus, vocab_size=400)
    logger.info("model built at %.0f s", time.perf_counter() - started)
    pad = int(tokenizer.pad_token_id)
    eos = int(tokenizer.eos_token_id)

    def encode(p: dict[str, str]) -> dict[str, Any]:
        return {
            "prompt_ids": tokenizer(p["prompt"])["input_ids"],
            "completion_ids": tokenizer(p["trace"], add_special_tokens=False)["input_ids"] + [eos],
        }

    train_problems = _problems(seed + 10_000, settings.train_problems, settings, traces=False)
    eval_problems = _problems(seed + 20_000, settings.eval_problems, settings, traces=False)
    max_new = max(len(encode(p)["completion_ids"]) for p in sft_data) + 8
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        _sft(
            model,
            [encode(p) for p in sft_data],
            pad,
            root / "sft",
            max_steps=settings.sft_steps,
            learning_rate=settings.sft_learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=50,
            seed=seed,
        )
        config = training_args(
            root / "o1",
            cls=O1PrunerConfig,
            num_presamples=settings.num_presamples,
            lam=settings.lam,
            presample_temperature=settings.temperature,
            presample_top_p=1.0,
            presample_max_new_tokens=max_new,
            presample_batch_size=32,
            num_train_epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=16,
            save_strategy="no",
            disable_tqdm=True,
            logging_strategy="no",
            lr_scheduler_type="constant",
            seed=seed,
        )
        logger.info("reference taught at %.0f s", time.perf_counter() - started)
        presample(
            model,
            tokenizer,
            train_problems,
            last_number_grader,
            config,
            output=root / "presample",
            progress=False,
        )
        lines = [json.loads(x) for x in (root / "presample" / "samples.jsonl").read_text().splitlines()]
        samples = [s for line in lines for s in line["samples"]]
        sft_short, pairs = _pick(lines)

        def run_arm(name: str) -> Any:
            arm = copy.deepcopy(model)
            if name == "SFT shortest" and sft_short:
                _sft(
                    arm,
                    sft_short,
                    pad,
                    root / "short",
                    num_train_epochs=settings.epochs,
                    learning_rate=settings.learning_rate,
                    per_device_train_batch_size=16,
                    lr_scheduler_type="constant",
                    seed=seed,
                )
            elif name == "DPO" and pairs:
                _dpo(
                    arm,
                    tokenizer,
                    pairs,
                    root / "dpo",
                    num_train_epochs=settings.epochs,
                    learning_rate=settings.learning_rate,
                    lr_scheduler_type="constant",
                    seed=seed,
                )
            elif name.startswith("O1-Pruner"):
                lam = {"O1-Pruner λ=0": 0.0, "O1-Pruner high λ": settings.lam_high}.get(name, settings.lam)
                arm_config = dataclasses.replace(config, lam=lam)
                records = training_records(lines, arm_config)
                O1PrunerTrainer(  # the records carry the reference's log-probabilities (store_ref_logps)
                    model=arm,
                    args=arm_config,
                    train_dataset=records,
                    processing_class=tokenizer,
                ).train()
            return evaluate(
                arm, tokenizer, eval_problems, last_number_grader, max_new_tokens=max_new, batch_size=50
            )

        evaluations = {}
        for name in ARMS:
            evaluations[name] = run_arm(name)
            logger.info("%s done at %.0f s", name, time.perf_counter() - started)
    base = evaluations["reference"]
    arms = {
        name: ArmResult(
            accuracy=e.accuracy,
            mean_length=e.mean_length,
            aes=aes(e.accuracy, e.mean_length, max(base.accuracy, 1e-9), base.mean_length),
            aes_table=aes(
                e.accuracy, e.mean_length, max(base.accuracy, 1e-9), base.mean_length, sign_agnostic=True
            ),
        )
        for name, e in evaluations.items()
    }
    return SeedResult(
        seed=seed,
        arms=arms,
        presample_accuracy=sum(s["correct"] for s in samples) / len(samples),
        presample_length=sum(len(s["token_ids"]) for s in samples) / len(samples),
        sft_samples=len(sft_short),
        dpo_pairs=len(pairs),
        seconds=time.perf_counter() - started,
    )
