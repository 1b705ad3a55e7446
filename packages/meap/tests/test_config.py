from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from paperpack.core.errors import ConfigError
from paperpack.meap import MEAPConfig


def test_defaults_follow_the_paper_and_official_code() -> None:
    config = MEAPConfig()
    assert (config.mask_ratio, config.sft_mask_ratio, config.min_answer_tokens) == (0.15, 0.1, 51)
    assert (config.sft_layout, config.per_row_positions, config.mask_token) == ("separate", True, "[MASK]")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mask_ratio", 1.0, r"`mask_ratio` must be in \[0, 1\), got 1.0"),
        ("mask_ratio", -0.1, r"`mask_ratio` must be in \[0, 1\)"),
        ("mask_ratio", float("nan"), "`mask_ratio` must be a finite number, got nan"),
        ("sft_mask_ratio", 2, r"`sft_mask_ratio` must be in \[0, 1\)"),
        ("min_answer_tokens", -1, "`min_answer_tokens` must be >= 0"),
        ("min_answer_tokens", 2.5, "`min_answer_tokens` must be an integer"),
        ("sft_layout", "interleaved", "`sft_layout` must be one of 'separate', 'concat', got 'interleaved'"),
        ("per_row_positions", "yes", "`per_row_positions` must be true or false"),
        ("mask_token", "", "`mask_token` must be a non-empty string"),
        ("seed", -3, "`seed` must be >= 0"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MEAPConfig(**{field: value})  # type: ignore[arg-type]


def test_parses_with_hf_argument_parser() -> None:
    (config,) = HfArgumentParser(MEAPConfig).parse_args_into_dataclasses(
        ["--mask_ratio", "0.2", "--sft_layout", "concat", "--no_per_row_positions", "--seed", "3"]
    )
    assert config == MEAPConfig(mask_ratio=0.2, sft_layout="concat", per_row_positions=False, seed=3)
    with pytest.raises(SystemExit):
        HfArgumentParser(MEAPConfig).parse_args_into_dataclasses(["--sft_layout", "other"])
