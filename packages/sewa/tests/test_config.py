"""SeWAConfig validation and HfArgumentParser parsing."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser

from paperpack.core.errors import ConfigError
from paperpack.sewa import SeWAConfig


def test_defaults_and_every_field_has_help() -> None:
    config = SeWAConfig()
    assert (config.k, config.averaging, config.selection_data) == (5, "normalized", "train")
    for field in dataclasses.fields(SeWAConfig):
        assert field.metadata.get("help"), field.name


def test_parses_with_hf_argument_parser() -> None:
    (config,) = HfArgumentParser(SeWAConfig).parse_args_into_dataclasses(
        ["--k", "3", "--temperature_schedule", "linear", "--vmap_loss", "true", "--selection_data", "eval"]
    )
    assert config == SeWAConfig(k=3, temperature_schedule="linear", vmap_loss=True, selection_data="eval")
    with pytest.raises(SystemExit):
        HfArgumentParser(SeWAConfig).parse_args_into_dataclasses(["--averaging", "median"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"`k` must be >= 1, got 0"),
        ({"k": 2.0}, r"`k` must be an integer, got 2.0"),
        ({"iterations": 0}, r"`iterations` must be >= 1"),
        ({"mc_samples": True}, r"`mc_samples` must be an integer, got True"),
        ({"temperature_start": 0.0}, r"`temperature_start` must be > 0, got 0.0"),
        ({"temperature_end": 2.0}, r"`temperature_end` must be <= `temperature_start`"),
        (
            {"temperature_schedule": "cosine"},
            r"`temperature_schedule` must be one of 'exponential', 'linear', 'constant'",
        ),
        ({"mask_lr": float("nan")}, r"`mask_lr` must be a finite number, got nan"),
        ({"mask_optimizer": "rmsprop"}, r"`mask_optimizer` must be one of 'adam', 'sgd'"),
        ({"averaging": "mean"}, r"`averaging` must be one of 'normalized', 'over_k'"),
        ({"projection": "l1"}, r"`projection` must be one of 'sum_eq_k', 'sum_le_k'"),
        ({"selection_data": "test"}, r"`selection_data` must be one of 'train', 'eval', got 'test'"),
        ({"vmap_loss": "yes"}, r"`vmap_loss` must be true or false, got 'yes'"),
        ({"backward_per_sample": 1}, r"`backward_per_sample` must be true or false, got 1"),
        ({"seed": -1}, r"`seed` must be >= 0"),
    ],
)
def test_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SeWAConfig(**kwargs)
