"""Fixtures of the trainer tests (the tiny model, datasets and collator are the core plugin's)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from paperpack.core.hf import training_args
from paperpack.tezo import ZOConfig, ZOSFTConfig


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
