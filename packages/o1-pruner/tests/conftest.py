"""Fixtures shared by the trainer, presample, CLI and DDP tests."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from paperpack.core.hf import training_args
from paperpack.o1_pruner import O1PrunerConfig


def weighted_samples(
    tokenizer: PreTrainedTokenizerFast, count: int = 16, seed: int = 0
) -> list[dict[str, Any]]:
    """Prompt and completion ids of varied lengths with weights of both signs (what presample returns)."""
    rng = random.Random(seed)
    words = "the model and the data of a red river in the north".split()
    records = []
    for _ in range(count):
        prompt = tokenizer(" ".join(rng.choices(words, k=rng.randint(2, 5))))["input_ids"]
        completion = [rng.randrange(10, 400) for _ in range(rng.randint(2, 9))] + [tokenizer.eos_token_id]
        records.append({"prompt_ids": prompt, "completion_ids": completion, "weight": rng.gauss(0.0, 1.0)})
    return records


@pytest.fixture(scope="session")
def samples(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[dict[str, Any]]:
    return weighted_samples(tiny_lm[1])


@pytest.fixture
def fresh_model(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> Callable[[], LlamaForCausalLM]:
    return lambda: copy.deepcopy(tiny_lm[0])


ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_steps": 3,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
    "disable_tqdm": True,
    "num_presamples": 4,
    "presample_max_new_tokens": 6,
    "presample_batch_size": 2,
}


@pytest.fixture
def make_args(tmp_path: Path) -> Callable[..., O1PrunerConfig]:
    def make(subdir: str = "run", **overrides: Any) -> O1PrunerConfig:
        return training_args(tmp_path / subdir, cls=O1PrunerConfig, **{**ARGS, **overrides})

    return make
