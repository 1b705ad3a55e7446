"""Synthetic stand-ins for helpfulness, honesty and harmlessness, small enough for a CPU demo.

Every example is a prompt of a task word and three content words, and a one-token answer:

- helpful (``help``): the word that appears twice (the majority), e.g. ``help river apple river =``
  → ``river``.
- honest (``check``): the last word, unless the prompt holds the "unanswerable" marker ``what``; then the
  abstention token ``question``.
- harmless (``safe``): the first word, unless one of three "forbidden" words appears; then the refusal ``no``.

A generic "pretraining" task teaches the base model to copy words by position (first, middle or last), the
skill the three tasks share, so the experts are small fine-tunes of one base, as in the paper. All words are
single tokens of :func:`paperpack.core.hf.tiny_causal_lm`'s tokenizer.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TASKS", "TaskData", "accuracy", "make_pretraining", "make_task"]

WORDS = (
    "river", "apple", "orange", "house", "music", "morning", "city", "north",
    "east", "yellow", "model", "data", "state", "train", "gradient", "large",
)  # fmt: skip
FORBIDDEN = ("north", "east", "yellow")
UNANSWERABLE = "what"
ABSTAIN = "question"
REFUSE = "no"
#: The three tasks, in the paper's order: helpfulness, honesty, harmlessness.
TASKS = ("helpful", "honest", "harmless")
_PREFIX = {"helpful": "help", "honest": "check", "harmless": "safe"}
_POSITIONS = {"one": 0, "weight": 1, "rank": 2}  # generic copy tasks: task word → position copied


def _example(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "helpful":
        twice, once = rng.sample(WORDS, 2)
        words = [twice, twice, once]
        rng.shuffle(words)
        answer = twice
    elif task == "honest":
        words = rng.sample(WORDS, 3)
        if rng.random() < 0.5:
            words[rng.randrange(3)] = UNANSWERABLE
            answer = ABSTAIN
        else:
            answer = words[-1]
    elif task == "harmless":
        safe = [w for w in WORDS if w not in FORBIDDEN]
        words = rng.sample(safe, 3)
        if rng.random() < 0.5:
            words[rng.randrange(3)] = rng.choice(FORBIDDEN)
            answer = REFUSE
        else:
            answer = words[0]
    else:
        raise ValueError(f"unknown task {task!r}")
    return f"{_PREFIX[task]} {' '.join(words)} =", f" {answer}"


@dataclass
class TaskData:
    """Prompt / completion pairs of one task, split into train, validation and test."""

    name: str
    train: list[dict[str, str]]
    validation: list[dict[str, str]]
    test: list[dict[str, str]]


def _split(prompt: str) -> str:
    """Assign a prompt to a split by a hash of its text: held-out prompts never appear in training."""
    bucket = zlib.crc32(prompt.encode()) % 20
    return "test" if bucket < 3 else "validation" if bucket < 6 else "train"


def make_task(task: str, *, num_train: int, num_eval: int, seed: int) -> TaskData:
    """Sample a task's splits; validation and test prompts are distinct and never seen in training.

    Raises:
        ValueError: when the task has too few distinct prompts for ``num_eval``.
    """
    rng = random.Random(f"{task}-{seed}")
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    seen: set[str] = set()
    for _ in range(100 * (num_train + num_eval)):
        prompt, completion = _example(task, rng)
        split = _split(prompt)
        wanted = num_train if split == "train" else num_eval
        if len(splits[split]) >= wanted or (split != "train" and prompt in seen):
            if all(len(v) >= (num_train if k == "train" else num_eval) for k, v in splits.items()):
                break
            continue
        seen.add(prompt)
        splits[split].append({"prompt": prompt, "completion": completion})
    else:
        raise ValueError(f"task {task!r} has too few distinct prompts for {num_eval} evaluation examples")
    return TaskData(task, splits["train"], splits["validation"], splits["test"])


def make_pretraining(num: int, *, seed: int) -> list[dict[str, str]]:
    """The generic copy-by-position data the base model is "pretrained" on."""
    rng = random.Random(f"pretrain-{seed}")
    examples = []
    vocabulary = [*WORDS, UNANSWERABLE]
    for _ in range(num):
        word, position = rng.choice(list(_POSITIONS.items()))
        words = rng.sample(vocabulary, 3)
        examples.append({"prompt": f"{word} {' '.join(words)} =", "completion": f" {words[position]}"})
    return examples


def encode(tokenizer: Any, examples: list[dict[str, str]]) -> dict[str, Tensor]:
    """Right-padded prompts, the position of each prompt's last token and the answer's token id."""
    batch = tokenizer([e["prompt"] for e in examples], return_tensors="pt", padding=True)
    answers = [tokenizer(e["completion"], add_special_tokens=False)["input_ids"] for e in examples]
    if any(len(ids) != 1 for ids in answers):
        raise ValueError("every answer must be a single token of the tokenizer")
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "last": batch["attention_mask"].sum(dim=1) - 1,
        "answer": torch.tensor([ids[0] for ids in answers]),
    }


@torch.no_grad()
def accuracy(model: nn.Module, encoded: Mapping[str, Tensor]) -> float:
    """The fraction of prompts whose next-token argmax is the answer."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    model.train(was_training)
    rows = torch.arange(logits.shape[0])
    predicted = logits[rows, encoded["last"]].argmax(dim=-1)
    return float((predicted == encoded["answer"]).float().mean())
