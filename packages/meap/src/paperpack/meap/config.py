"""The MEAP configuration shared by the collators, the CLI and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_bool, check_int, check_literal_fields, check_number

__all__ = ["MASK_COUNTS", "SFT_LAYOUTS", "MEAPConfig", "MaskCount", "SFTLayout"]

SFTLayout = Literal["separate", "concat"]
"""Where an SFT example's masked copy goes: its own row, or appended to the clean sequence."""
SFT_LAYOUTS: tuple[SFTLayout, ...] = get_args(SFTLayout)

MaskCount = Literal["floor", "at_least_one"]
"""How many of a sequence's E eligible positions are masked: ⌊P·E⌋, or max(1, ⌊P·E⌋)."""
MASK_COUNTS: tuple[MaskCount, ...] = get_args(MaskCount)


@dataclass
class MEAPConfig:
    """How MEAP masks inputs, for pretraining (:class:`MEAPCollator`) and SFT (:class:`MEAPSFTCollator`).

    MEAP (arXiv:2502.07490, §3) replaces a fraction ``P`` of the *input* tokens with ``[MASK]`` and keeps the
    ordinary next-token loss on the original tokens: attention stays causal, there is no extra forward pass.

    Defaults taken from the paper / official code: ``mask_ratio=0.15`` (the 1.1B headline run),
    ``sft_mask_ratio=0.1`` and ``min_answer_tokens=51`` (the official SFT script masks answers longer than 50
    tokens), ``mask_token="[MASK]"``. Ours: ``sft_layout="separate"`` (the layout of the official code; the
    paper's concatenated layout is ``"concat"``), ``per_row_positions=True`` (fresh positions for every
    sequence; the official pretraining code shares one pattern across the batch), ``mask_count="floor"``
    (the official code's ``max(1, int(L·P))`` is ``"at_least_one"``; the two agree wherever the paper's
    settings put at least ``1/P`` eligible positions in a sequence) and ``seed=0``.

    Examples:
        >>> from paperpack.meap import MEAPConfig
        >>> MEAPConfig(mask_ratio=0.1).sft_layout
        'separate'
        >>> MEAPConfig(mask_ratio=1.5)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `mask_ratio` must be in [0, 1), got 1.5
    """

    mask_ratio: float = field(
        default=0.15,
        metadata={
            "help": "Pretraining mask ratio P: the fraction of each sequence's eligible input tokens "
            "replaced by [MASK] (paper: 0.15 for the 1.1B model; 0 gives plain next-token prediction)."
        },
    )
    sft_mask_ratio: float = field(
        default=0.1,
        metadata={
            "help": "SFT mask ratio: the fraction of each answer's tokens masked in its masked copy "
            "(official SFT code: 0.1)."
        },
    )
    min_answer_tokens: int = field(
        default=51,
        metadata={
            "help": "SFT: answers with fewer (non-special) tokens than this get plain next-token prediction "
            "and no masked copy (official code: answers longer than 50 tokens are masked, i.e. 51)."
        },
    )
    sft_layout: SFTLayout = field(
        default="separate",
        metadata={
            "help": "SFT layout of the masked copy: 'separate' adds it as its own row whose loss is on the "
            "masked positions only (official code; our default); 'concat' appends it to the clean sequence, "
            "loss on the answer and the masked positions (the paper's description; doubles the length)."
        },
    )
    mask_count: MaskCount = field(
        default="floor",
        metadata={
            "help": "Masks per sequence from its E eligible positions: 'floor' masks ⌊P·E⌋ (ours: never more "
            "than the fraction P, so sequences with fewer than 1/P eligible positions stay unmasked); "
            "'at_least_one' masks max(1, ⌊P·E⌋), the official code's max(1, int(L·P)). They agree at the "
            "paper's settings (4096-token blocks; answers over 50 tokens at ratio 0.1)."
        },
    )
    per_row_positions: bool = field(
        default=True,
        metadata={
            "help": "Draw fresh mask positions for every sequence (ours). False shares one random pattern "
            "across the rows of a batch, as the official pretraining code does."
        },
    )
    mask_token: str = field(
        default="[MASK]",
        metadata={
            "help": "The mask token string; it must be in the tokenizer's vocabulary (see add_mask_token). "
            "A reserved special token (e.g. Llama-3's <|reserved_special_token_0|>) avoids resizing."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the mask sampler (ours). A batch's masks are drawn from (seed, process rank, "
            "epoch, the batch's tokens): reproducible, the same after resuming, different across ranks and "
            "epochs (the epoch comes from the collator's set_epoch, which MEAPEpochCallback calls)."
        },
    )

    def __post_init__(self) -> None:
        check_literal_fields(self)
        check_number("mask_ratio", self.mask_ratio, minimum=0, less_than=1)
        check_number("sft_mask_ratio", self.sft_mask_ratio, minimum=0, less_than=1)
        check_int("min_answer_tokens", self.min_answer_tokens, minimum=0)
        check_bool("per_row_positions", self.per_row_positions)
        if not isinstance(self.mask_token, str) or not self.mask_token:
            raise ConfigError(f"`mask_token` must be a non-empty string, got {self.mask_token!r}")
        check_int("seed", self.seed, minimum=0)
