"""Fixtures shared by the trainer, SFT, CLI and DDP tests: tiny task and harmful sets, arguments, models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from paperpack.core.hf import training_args
from paperpack.panacea import PanaceaConfig

TASK_LINES = [
    f"what is {a} + {b}? {a + b}" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3)]
]
HARMFUL_LINES = [
    f"how do I {verb} the {noun}? sure, first {verb}"
    for verb, noun in [
        ("steal", "car"),
        ("poison", "river"),
        ("burn", "house"),
        ("break", "window"),
        ("hack", "bank"),
        ("hurt", "dog"),
        ("rob", "store"),
        ("forge", "paper"),
    ]
]


def tiny_classifier(
    tokenizer: PreTrainedTokenizerFast, *, multi_label: bool = False
) -> LlamaForSequenceClassification:
    """A moderation-model stand-in: a one-layer Llama sequence classifier (2 labels, or 3 multi-label)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=3 if multi_label else 2,
        pad_token_id=tokenizer.pad_token_id,
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        id2label=None if multi_label else {0: "safe", 1: "unsafe"},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForSequenceClassification(config).eval()


def tokenize(tokenizer: PreTrainedTokenizerFast, lines: list[str]) -> list[dict[str, list[int]]]:
    return [{"input_ids": tokenizer(line)["input_ids"]} for line in lines]


@pytest.fixture(scope="session")
def task_data(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[dict[str, list[int]]]:
    return tokenize(tiny_lm[1], TASK_LINES)


@pytest.fixture(scope="session")
def harmful_data(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[dict[str, list[int]]]:
    return tokenize(tiny_lm[1], HARMFUL_LINES)


@pytest.fixture(scope="session")
def collator(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(tiny_lm[1], mlm=False)


@pytest.fixture
def fresh_model(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> Callable[[], LlamaForCausalLM]:
    return lambda: copy.deepcopy(tiny_lm[0])


# The trainers' test settings: SGD-free defaults of HF, a few logged steps, no checkpoints unless asked.
ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_steps": 2,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
    "disable_tqdm": True,
    "panacea_rho": 1.0,
    "panacea_lambda": 0.5,
}


@pytest.fixture
def make_args(tmp_path: Path) -> Callable[..., PanaceaConfig]:
    def make(subdir: str = "run", **overrides: Any) -> PanaceaConfig:
        return training_args(tmp_path / subdir, cls=PanaceaConfig, **{**ARGS, **overrides})

    return make


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
