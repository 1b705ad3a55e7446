"""Fixtures shared by the trainer, CLI and DDP tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, LlamaForCausalLM, PreTrainedTokenizerFast

from paperpack.core.hf import default_corpus, training_args
from paperpack.tezo import ZOConfig, ZOSFTConfig


@pytest.fixture(scope="session")
def lm_dataset(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[dict[str, list[int]]]:
    """32 short lines of the built-in corpus, tokenized, of varied lengths."""
    _, tokenizer = tiny_lm
    lines = default_corpus(num_lines=32, seed=1)
    return [{"input_ids": tokenizer(line, truncation=True, max_length=24)["input_ids"]} for line in lines]


@pytest.fixture(scope="session")
def collator(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(tiny_lm[1], mlm=False)


@pytest.fixture(scope="session")
def sft_dataset() -> Dataset:
    """The same 32 lines as ``lm_dataset``, untokenized: a TRL language-modeling dataset of ``text`` records."""
    return Dataset.from_list([{"text": line} for line in default_corpus(num_lines=32, seed=1)])


@pytest.fixture
def fresh_model(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> Callable[[], LlamaForCausalLM]:
    return lambda: copy.deepcopy(tiny_lm[0])


# The trainers' test settings: small batches and rank, a few logged steps, no checkpoints unless asked.
_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_steps": 4,
    "save_strategy": "no",
    "logging_steps": 1,
    "zo_rank": 4,
    "seed": 0,
    "disable_tqdm": True,
}


@pytest.fixture
def make_args(tmp_path: Path) -> Callable[..., ZOConfig]:
    def make(subdir: str = "run", **overrides: Any) -> ZOConfig:
        return training_args(tmp_path / subdir, cls=ZOConfig, **{**_ARGS, **overrides})

    return make


@pytest.fixture
def make_sft_args(tmp_path: Path) -> Callable[..., ZOSFTConfig]:
    """``make_args`` for ZOSFTTrainer: short sequences, float32 on the CPU (TRL's configs default to bf16)."""

    def make(subdir: str = "sft", **overrides: Any) -> ZOSFTConfig:
        settings = {**_ARGS, "max_length": 24, "bf16": False, "use_cpu": True, **overrides}
        return training_args(tmp_path / subdir, cls=ZOSFTConfig, **settings)

    return make


def mean_loss(model: torch.nn.Module, dataset: list[dict[str, list[int]]], collator: Any) -> float:
    """The model's loss on the whole dataset, in eval mode."""
    model.eval()
    with torch.no_grad():
        batch = collator(dataset)
        return float(model(**batch).loss)
