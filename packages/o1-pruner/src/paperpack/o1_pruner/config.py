"""``O1PrunerConfig``: ``transformers.TrainingArguments`` plus O1-Pruner's pre-sampling and loss settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.core.validation import (
    check_bool,
    check_int,
    check_literal_fields,
    check_positive,
    check_range,
)

__all__ = ["O1PrunerConfig"]


@dataclass
class O1PrunerConfig(TrainingArguments):
    r"""Training arguments of :class:`~paperpack.o1_pruner.O1PrunerTrainer` and of pre-sampling.

    The paper's symbols: K = ``num_presamples`` (samples per problem drawn from the reference model π_ref),
    λ = ``lam`` (the accuracy term of the length-harmonizing reward), ε = ``cliprange`` (PPO-clip). The
    learning rate, schedule, batch size and gradient accumulation are the ``TrainingArguments`` ones (the
    paper: lr 2e-7 for Marco-o1-7B, 2e-6 for QwQ-32B, cosine, warmup 0.1, one epoch, ``max_grad_norm`` 10).

    Defaults that differ from ``TrainingArguments``: ``remove_unused_columns=False`` (the trainer reads the
    ``weight`` column, which no model's ``forward`` names).

    Raises:
        ConfigError: for a bad value: K < 2 (a mean over one sample is no reference), λ < 0, a clip interval
            that is empty, a top-p outside (0, 1], a temperature <= 0.

    Examples:
        >>> from paperpack.o1_pruner import O1PrunerConfig
        >>> args = O1PrunerConfig("out", num_presamples=8, lam=2.0, report_to="none", use_cpu=True)
        >>> args.cliprange, args.weight_clip, args.ratio_level
        (0.2, [-2.0, 4.0], 'sequence_mean')
    """

    num_presamples: int = field(
        default=16,
        metadata={
            "help": "K: samples per problem from the reference model; L_ref and A_ref are their mean length "
            "and accuracy. The default is the paper's Marco-o1 run (12 for QwQ)."
        },
    )
    samples_per_problem: int = field(
        default=2,
        metadata={
            "help": "Training samples kept per problem (the first ones after a seeded shuffle of the K). "
            "The default is the official code's used_count_per_problem."
        },
    )
    lam: float = field(
        default=2.0,
        metadata={
            "help": "λ: weight of the accuracy term λ(A(y) − A_ref) of the reward. The default is the "
            "paper's Marco-o1 run (5 for QwQ)."
        },
    )
    weight_clip: list[float] = field(
        default_factory=lambda: [-2.0, 4.0],
        metadata={
            "help": "Clip interval [low, high] of the reward before normalization. The default is the "
            "official code's."
        },
    )
    normalize_weights: Literal["zscore", "none"] = field(
        default="zscore",
        metadata={
            "help": "zscore: subtract the data set's mean reward and divide by its standard deviation (after "
            "clipping); none: use the clipped reward. The default is the official code's."
        },
    )
    cliprange: float = field(
        default=0.2,
        metadata={
            "help": "ε of the PPO-clip loss: the ratio is clipped to [1−ε, 1+ε]. The default is the "
            "official code's."
        },
    )
    ratio_level: Literal["sequence_mean", "token"] = field(
        default="sequence_mean",
        metadata={
            "help": "sequence_mean: one ratio per sample, exp of the difference of the length-normalized "
            "sequence log-probabilities (the official code); token: one ratio per token, clipped per token "
            "and averaged over the sample's tokens (ours). The default is the official code's."
        },
    )
    presample_temperature: float = field(
        default=0.5,
        metadata={"help": "Sampling temperature of pre-sampling. The default is the official code's."},
    )
    presample_top_p: float = field(
        default=0.8,
        metadata={"help": "Nucleus mass of pre-sampling. The default is the official code's."},
    )
    presample_max_new_tokens: int = field(
        default=8192,
        metadata={
            "help": "Length limit of each pre-sample; prompt plus this must fit the model's context. The "
            "default is the official code's."
        },
    )
    presample_batch_size: int = field(
        default=8,
        metadata={
            "help": "Problems per generate call during pre-sampling (each with K samples, so K times as many "
            "sequences); also the unit a resumed pre-sampling keeps. The default is ours."
        },
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "Wrap each problem as a user turn with the tokenizer's chat template (the paper's models "
            "are chat models); without it the prompt is used as written (our default)."
        },
    )
    store_ref_logps: bool = field(
        default=True,
        metadata={
            "help": "Pre-sampling also stores the reference's per-token log-probabilities of every sample "
            "(`ref_logps`), so training needs no reference forward pass (the reference is frozen and the "
            "samples fixed: the same loss). The default is ours; the official code recomputes them each "
            "step."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep the data set's columns (the trainer reads `weight`)."},
    )

    def __post_init__(self) -> None:
        check_literal_fields(self)
        check_bool("chat_template", self.chat_template)
        check_bool("store_ref_logps", self.store_ref_logps)
        check_int("num_presamples", self.num_presamples, minimum=2)
        check_int("samples_per_problem", self.samples_per_problem, minimum=1)
        if self.samples_per_problem > self.num_presamples:
            raise ConfigError(
                f"`samples_per_problem` must be <= `num_presamples` (K={self.num_presamples}), got "
                f"{self.samples_per_problem}"
            )
        check_positive("lam", self.lam, allow_zero=True)
        if not math.isfinite(self.lam):
            raise ConfigError(f"`lam` must be finite, got {self.lam}")
        self.weight_clip = _clip_interval(self.weight_clip)
        check_range("cliprange", self.cliprange, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_positive("presample_temperature", self.presample_temperature)
        check_range("presample_top_p", self.presample_top_p, 0.0, 1.0, low_inclusive=False)
        check_int("presample_max_new_tokens", self.presample_max_new_tokens, minimum=1)
        check_int("presample_batch_size", self.presample_batch_size, minimum=1)
        super().__post_init__()


def _clip_interval(value: object) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"`weight_clip` must be two numbers [low, high], got {value!r}")
    low, high = value
    for number in (low, high):
        if isinstance(number, bool) or not isinstance(number, int | float) or math.isnan(number):
            raise ConfigError(f"`weight_clip` must be two numbers [low, high], got {value!r}")
    if not low < high:
        raise ConfigError(f"`weight_clip` must have low < high, got [{low}, {high}]")
    return [float(low), float(high)]
