"""The MEAP demo's experiment: NTP vs MEAP on multi-query associative recall, with typed results.

A tiny Llama is trained from scratch on synthetic records: ``N`` random key-value pairs (the haystack), then
every key queried once in random order, each followed by its value. Retrieval accuracy is measured by the
depth of the queried pair in the context. Pretraining compares NTP with MEAP (:class:`MEAPCollator`); SFT
(loss on the queries only) compares plain SFT with MEAP-SFT (:class:`MEAPSFTCollator`). The paper's direction:
MEAP retrieves better, most of all in the middle of the context. :mod:`paperpack.meap.demo` turns the results
into tables, plots and claims.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from paperpack.core.data import IGNORE_INDEX
from paperpack.core.demo import Scale
from paperpack.meap.collator import MEAPCollator, MEAPSFTCollator
from paperpack.meap.config import MEAPConfig

__all__ = [
    "ARMS",
    "Arm",
    "ArmResult",
    "RecallResults",
    "RecallSettings",
    "RecallTask",
    "accuracy_by_depth",
    "run_recall",
    "train",
]

Arm = Literal["NTP", "MEAP", "SFT", "MEAP-SFT"]
"""A training arm: NTP and MEAP pretrain on every token; SFT and MEAP-SFT train on the queries only."""
ARMS: tuple[Arm, ...] = ("NTP", "MEAP", "SFT", "MEAP-SFT")

_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "[MASK]", "<query>")


@dataclass(frozen=True)
class RecallTask:
    """The synthetic multi-query associative-recall task.

    A record is ``<s> k₁ v₁ … k_N v_N <query> k_π(1) v_π(1) … k_π(N) v_π(N) </s>``: ``N`` distinct random keys
    with random values (the haystack), then every key queried once in random order, each followed by its
    value. The value after a queried key can only be predicted by retrieving it from the context; its
    *depth* is the position of that pair in the context.

    Attributes:
        num_pairs: key-value pairs per record.
        num_keys: size of the key vocabulary.
        num_values: size of the value vocabulary.
    """

    num_pairs: int = 8
    num_keys: int = 32
    num_values: int = 32

    def tokenizer(self) -> Any:
        """A word-level tokenizer over the task's tokens; ``[MASK]`` and ``<query>`` are special tokens."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = [
            *_SPECIALS,
            *(f"k{i}" for i in range(self.num_keys)),
            *(f"v{i}" for i in range(self.num_values)),
        ]
        backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            mask_token="[MASK]",
            additional_special_tokens=["<query>"],
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(_SPECIALS) + self.num_keys + self.num_values

    @property
    def length(self) -> int:
        """Tokens per record."""
        return 4 * self.num_pairs + 3

    @property
    def query_start(self) -> int:
        """Index of the first queried key (the prompt of the SFT form ends just before it)."""
        return 2 * self.num_pairs + 2

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """One record: ``(token ids, depth of the pair queried at each query, in query order)``."""
        keys = rng.sample(range(self.num_keys), self.num_pairs)
        values = [rng.randrange(self.num_values) for _ in keys]
        order = rng.sample(range(self.num_pairs), self.num_pairs)
        key_base, value_base = len(_SPECIALS), len(_SPECIALS) + self.num_keys
        ids = [_SPECIALS.index("<s>")]
        for key, value in zip(keys, values, strict=True):
            ids += [key_base + key, value_base + value]
        ids.append(_SPECIALS.index("<query>"))
        for depth in order:
            ids += [key_base + keys[depth], value_base + values[depth]]
        ids.append(_SPECIALS.index("</s>"))
        return ids, order

    def model(self, seed: int, *, hidden_size: int = 64) -> Any:
        """A tiny 2-layer Llama sized for this task's tokenizer, initialised from ``seed``."""
        from paperpack.core.hf import tiny_causal_lm

        model, _ = tiny_causal_lm(
            tokenizer=self.tokenizer(),
            hidden_size=hidden_size,
            seed=seed,
            max_position_embeddings=2 * self.length,
        )
        return model


def _batches(task: RecallTask, *, sft: bool, seed: int, batch_size: int) -> Any:
    rng = random.Random(seed)
    while True:
        batch = []
        for _ in range(batch_size):
            ids, _ = task.sample(rng)
            labels = [IGNORE_INDEX] * task.query_start + ids[task.query_start :] if sft else ids
            batch.append({"input_ids": ids, "labels": labels})
        yield batch


def train(
    task: RecallTask,
    collator: Any,
    *,
    steps: int,
    seed: int,
    sft: bool,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    hidden_size: int = 64,
    clip: float | None = 1.0,
    progress: Any = None,
) -> Any:
    """Train a fresh tiny model for ``steps`` AdamW steps (warm-up, cosine to 10 %) on collated batches."""
    model = task.model(seed, hidden_size=hidden_size)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _batches(task, sft=sft, seed=10_000 + seed, batch_size=batch_size)
    iterator = range(steps) if progress is None else progress(range(steps))
    for _ in iterator:
        batch = collator(next(batches))
        loss = model(**batch).loss
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model


@torch.no_grad()
def accuracy_by_depth(model: Any, task: RecallTask, *, records: int, seed: int) -> list[float]:
    """Greedy accuracy of the value predicted after each queried key, by the depth of its pair."""
    rng = random.Random(seed)
    samples = [task.sample(rng) for _ in range(records)]
    ids = torch.tensor([sample[0] for sample in samples])
    predicted = model(input_ids=ids).logits.argmax(-1)
    # The value of query q sits at query_start + 2q + 1 and is predicted at the key just before it.
    value_at = torch.arange(task.num_pairs) * 2 + task.query_start + 1
    correct = predicted[:, value_at - 1] == ids[:, value_at]
    depths = torch.tensor([sample[1] for sample in samples])
    hits = torch.zeros(task.num_pairs).index_add_(0, depths.reshape(-1), correct.reshape(-1).float())
    return (hits / records).tolist()


@dataclass(frozen=True)
class RecallSettings:
    """The experiment's scale: ``quick`` is a smoke run, ``full`` is what the docs report.

    Attributes:
        pretrain_steps: optimizer steps of the NTP and MEAP arms.
        sft_steps: optimizer steps of the SFT and MEAP-SFT arms (loss on the queries only: they learn faster).
        eval_records: records per evaluation (each queries every depth once).
        task: the recall task.
        mask_ratio: MEAP's ``P`` (the paper's 0.15).
        sft_mask_ratio: MEAP-SFT's answer mask ratio (scaled up for 16-token answers, see the notes).
        min_answer_tokens: MEAP-SFT's answer-length threshold (scaled down likewise).
    """

    pretrain_steps: int
    sft_steps: int
    eval_records: int
    task: RecallTask = field(default_factory=RecallTask)
    mask_ratio: float = 0.15
    sft_mask_ratio: float = 0.25
    min_answer_tokens: int = 4

    @classmethod
    def for_scale(cls, scale: Scale) -> RecallSettings:
        """The demo's settings at ``scale``."""
        if scale == "quick":
            return cls(pretrain_steps=150, sft_steps=100, eval_records=128)
        return cls(pretrain_steps=700, sft_steps=300, eval_records=512)

    def steps(self, arm: Arm) -> int:
        """The optimizer steps of ``arm``."""
        return self.sft_steps if is_sft(arm) else self.pretrain_steps

    def collator(self, arm: Arm, seed: int) -> MEAPCollator | MEAPSFTCollator:
        """The collator of ``arm``: MEAP's with the mask ratio at 0 for the NTP and SFT baselines."""
        tokenizer = self.task.tokenizer()
        if arm == "NTP":
            return MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.0, seed=seed))
        if arm == "MEAP":
            return MEAPCollator(tokenizer, MEAPConfig(mask_ratio=self.mask_ratio, seed=seed))
        if arm == "SFT":
            return MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.0, seed=seed))
        config = MEAPConfig(sft_mask_ratio=self.sft_mask_ratio, min_answer_tokens=self.min_answer_tokens)
        return MEAPSFTCollator(tokenizer, replace(config, seed=seed))


def is_sft(arm: Arm) -> bool:
    """Whether ``arm`` trains on the queries only."""
    return arm in ("SFT", "MEAP-SFT")


@dataclass(frozen=True)
class ArmResult:
    """One trained arm at one seed.

    Attributes:
        arm: the arm.
        seed: model initialisation, data and mask seed.
        steps: optimizer steps.
        accuracy: retrieval accuracy at each depth (1 = the first pair of the context).
        seconds: training wall time.
    """

    arm: Arm
    seed: int
    steps: int
    accuracy: list[float]
    seconds: float


@dataclass(frozen=True)
class RecallResults:
    """Every arm at every seed, with the settings that produced them."""

    settings: RecallSettings
    seeds: list[int]
    runs: list[ArmResult]

    def arms(self) -> list[Arm]:
        """The arms that ran, in order."""
        return list(dict.fromkeys(run.arm for run in self.runs))

    def accuracy(self, arm: Arm) -> list[float]:
        """Accuracy by depth of ``arm``, mean over the seeds."""
        rows = [run.accuracy for run in self.runs if run.arm == arm]
        return [sum(column) / len(column) for column in zip(*rows, strict=True)]

    def overall(self, arm: Arm) -> float:
        """Accuracy over every depth of ``arm``, mean over the seeds."""
        curve = self.accuracy(arm)
        return sum(curve) / len(curve)

    def seconds(self, arm: Arm) -> float:
        """Training wall time of ``arm``, summed over the seeds."""
        return sum(run.seconds for run in self.runs if run.arm == arm)


def run_recall(
    settings: RecallSettings,
    seeds: Sequence[int],
    *,
    arms: Sequence[Arm] = ARMS,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> RecallResults:
    """Train every arm at every seed from scratch and measure its retrieval accuracy by depth.

    Args:
        settings: steps, evaluation size, task and MEAP ratios.
        seeds: one run per arm and seed; the seed drives initialisation, data and masks.
        arms: the arms to run.
        progress: wraps the list of runs (a progress bar), or None.

    Returns:
        The typed results.
    """
    runs = [(seed, arm) for seed in seeds for arm in arms]
    results = []
    for seed, arm in progress(runs) if progress is not None else runs:
        started = time.perf_counter()
        steps = settings.steps(arm)
        model = train(settings.task, settings.collator(arm, seed), steps=steps, seed=seed, sft=is_sft(arm))
        seconds = time.perf_counter() - started
        curve = accuracy_by_depth(model, settings.task, records=settings.eval_records, seed=99_000 + seed)
        results.append(ArmResult(arm=arm, seed=seed, steps=steps, accuracy=curve, seconds=seconds))
    return RecallResults(settings=settings, seeds=list(seeds), runs=results)
