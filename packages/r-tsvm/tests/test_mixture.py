"""The data-mixture baseline: shares, repetition, errors, and a real SFTTrainer run."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
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


def mixture_data():
    """Two tiny datasets, mixed 1:3 by the tests below."""
    return [dataset("river", 8), dataset("apple", 8)]


@pytest.mark.slow
def test_train_on_mixture_trains_with_sft_trainer(tiny_lm, tmp_path):
    from paperpack.core.testing.contracts import assert_parameters_changed, snapshot_parameters

    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    before = snapshot_parameters(model)
    args = sft_args(tmp_path, max_steps=3, save_strategy="no", logging_steps=1)
    trainer = train_on_mixture(model, mixture_data(), args, processing_class=tokenizer, ratios=[1, 3])
    assert trainer.state.global_step == 3
    assert any("loss" in entry for entry in trainer.state.log_history)
    assert_parameters_changed(before, model)


@pytest.mark.slow
def test_resumed_mixture_training_matches_the_uninterrupted_run(tiny_lm, tmp_path):
    from paperpack.core.testing.resume import check_trainer_resume
    from paperpack.r_tsvm import mixture_trainer

    model, tokenizer = tiny_lm

    def make(settings, callbacks):
        folder, rest = settings["output_dir"], {k: v for k, v in settings.items() if k != "output_dir"}
        args = sft_args(folder, seed=0, data_seed=0, **rest)
        data = mixture_data()
        return mixture_trainer(
            copy.deepcopy(model), data, args, processing_class=tokenizer, ratios=[1, 3], callbacks=callbacks
        )

    check_trainer_resume(make, tmp_path)
