"""HRPConfig: defaults, validation with messages naming the field, HfArgumentParser."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import HfArgumentParser

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora import HRPConfig


def test_defaults() -> None:
    config = HRPConfig()
    assert (config.preheat_rank, config.preheat_steps, config.preheat_alpha) == (None, 20, None)
    assert (config.init, config.scale, config.svd, config.preheat_optimizer) == (
        "direction", "match_default", "exact", "adamw",
    )  # fmt: skip
    assert config.preheat_rank_for(8) == 64
    assert HRPConfig(preheat_rank=32).preheat_rank_for(8) == 32


def test_parses_with_hf_argument_parser() -> None:
    (config,) = HfArgumentParser(HRPConfig).parse_args_into_dataclasses(
        [
            "--preheat_rank",
            "64",
            "--preheat_steps",
            "5",
            "--init",
            "carry_over",
            "--svd",
            "lowrank",
            "--preheat_alpha",
            "16",
        ]
    )
    assert (config.preheat_rank, config.preheat_steps, config.init, config.svd) == (
        64,
        5,
        "carry_over",
        "lowrank",
    )
    assert config.preheat_alpha == 16.0
    with pytest.raises(SystemExit):
        HfArgumentParser(HRPConfig).parse_args_into_dataclasses(["--scale", "huge"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preheat_rank": 0}, "`preheat_rank` must be >= 1, got 0"),
        ({"preheat_rank": 8.0}, "`preheat_rank` must be an integer"),
        ({"preheat_steps": 0}, "`preheat_steps` must be >= 1, got 0"),
        ({"preheat_lr": 0.0}, "`preheat_lr` must be > 0"),
        ({"preheat_lr": float("nan")}, "`preheat_lr` must be a finite number, got nan"),
        ({"preheat_lr": float("inf")}, "`preheat_lr` must be a finite number, got inf"),
        ({"preheat_alpha": -1.0}, "`preheat_alpha` must be > 0"),
        ({"preheat_optimizer": "adam"}, "`preheat_optimizer` must be one of 'adamw', 'sgd', got 'adam'"),
        ({"init": "pissa"}, "`init` must be one of 'direction', 'carry_over', got 'pissa'"),
        ({"scale": "kaiming"}, "`scale` must be one of 'match_default', 'unit', 'sqrt_sv'"),
        ({"svd": "randomized"}, "`svd` must be one of 'exact', 'full', 'lowrank'"),
        ({"seed": -1}, "`seed` must be >= 0"),
        ({"init": "carry_over", "scale": "unit"}, "`scale` applies to init='direction' only"),
    ],
)
def test_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HRPConfig(**overrides)
