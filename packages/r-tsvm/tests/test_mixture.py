"""The data-mixture baseline: shares, repetition, errors, and a real SFTTrainer run."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from datasets import Dataset

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm import mix_datasets, train_on_mixture
from paperpack.r_tsvm.mixture import mixture_sizes


def dataset(name, size):
    return Dataset.from_list([{"prompt": f"{name} {i} =", "completion": f" {name}"} for i in range(size)])


def test_mixture_sizes_add_up_and_follow_ratios():
    assert mixture_sizes([5, 5, 5], None, 10) == [4, 3, 3]
    assert mixture_sizes([5, 5], [3, 1], 8) == [6, 2]
    assert sum(mixture_sizes([7, 1, 3], [0.2, 0.5, 0.3], 101)) == 101


def test_uniform_mixture_repeats_small_datasets_and_subsamples_large_ones():
    mixed = mix_datasets([dataset("a", 100), dataset("b", 10), dataset("c", 40)], num_samples=60, seed=1)
    assert Counter(mixed["source"]) == {0: 20, 1: 20, 2: 20}
    b_prompts = [p for p, s in zip(mixed["prompt"], mixed["source"], strict=True) if s == 1]
    assert Counter(b_prompts).most_common(1)[0][1] == 2  # two whole passes over b
    a_prompts = [p for p, s in zip(mixed["prompt"], mixed["source"], strict=True) if s == 0]
    assert len(set(a_prompts)) == 20  # a subsampled without replacement
    again = mix_datasets([dataset("a", 100), dataset("b", 10), dataset("c", 40)], num_samples=60, seed=1)
    assert again["prompt"] == mixed["prompt"]


def test_mixture_with_ratios():
    mixed = mix_datasets([dataset("a", 10), dataset("b", 10)], ratios=[3, 1], seed=0)
    assert Counter(mixed["source"]) == {0: 15, 1: 5}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratios": [1.0]}, "`ratios` must hold one number per dataset"),
        ({"ratios": [1.0, -1.0]}, "`ratios` must be non-negative"),
        ({"num_samples": 0}, "`num_samples` must be >= 1"),
    ],
)
def test_mixture_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        mix_datasets([dataset("a", 4), dataset("b", 4)], **kwargs)


def test_mixture_refuses_different_columns():
    other = Dataset.from_list([{"text": "x"}])
    with pytest.raises(ConfigError, match=r"`datasets\[1\]` has columns \['text'\]"):
        mix_datasets([dataset("a", 4), other])


def sft_args(folder, **overrides):
    """Small SFTConfig settings for the tiny model on the CPU."""
    from trl import SFTConfig

    from paperpack.core.hf import training_args

    settings = {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 16, **overrides}
    return training_args(folder, cls=SFTConfig, **settings)


def train_mixture(model, tokenizer, args, **kwargs):
    """Train ``model`` in place on the 1:3 mixture of two tiny datasets."""
    data = [dataset("river", 8), dataset("apple", 8)]
    return train_on_mixture(model, data, args, processing_class=tokenizer, ratios=[1, 3], **kwargs)


@pytest.mark.slow
def test_train_on_mixture_trains_with_sft_trainer(tiny_lm, tmp_path):
    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = sft_args(tmp_path, max_steps=3, save_strategy="no", logging_steps=1)
    trainer = train_mixture(model, tokenizer, args)
    assert trainer.state.global_step == 3
    assert any("loss" in entry for entry in trainer.state.log_history)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)


@pytest.mark.slow
def test_resumed_mixture_training_matches_the_uninterrupted_run(tiny_lm, tmp_path):
    from paperpack.core.testing.contracts import assert_state_dicts_equal
    from paperpack.core.testing.resume import StopAtStep

    model, tokenizer = tiny_lm

    def train(folder, stop=None, resume=None):
        args = sft_args(
            tmp_path / folder, max_steps=6, save_strategy="steps", save_steps=3, seed=0, data_seed=0
        )
        trained = copy.deepcopy(model)
        callbacks = [StopAtStep(stop)] if stop else None
        train_mixture(trained, tokenizer, args, callbacks=callbacks, resume_from_checkpoint=resume)
        return trained

    full = train("full")
    train("interrupted", stop=3)
    resumed = train("resumed", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in full.state_dict().items())
    assert_state_dicts_equal(resumed.state_dict(), full.state_dict())
