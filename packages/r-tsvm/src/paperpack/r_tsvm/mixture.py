"""Data-mixture baselines: one model trained on a mixture of the task datasets instead of merging experts.

The paper compares merging with three mixture strategies; the two it names plainly are here: a uniform mixture
(equal shares of every dataset) and a mixture with user-set ratios. Training is TRL's ``SFTTrainer``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

__all__ = ["mix_datasets", "mixture_sizes", "mixture_trainer", "train_on_mixture"]

logger = logging.getLogger(__name__)


def mixture_sizes(sizes: Sequence[int], ratios: Sequence[float] | None, total: int) -> list[int]:
    """How many examples each dataset contributes to a mixture of ``total`` examples.

    Shares are proportional to ``ratios`` (None: equal shares); rounding is by largest remainder so the counts
    add up to ``total``.

    Raises:
        ConfigError: for a wrong number of ratios, a negative ratio or ratios summing to zero.

    Examples:
        >>> mixture_sizes([100, 10, 50], None, 90)
        [30, 30, 30]
        >>> mixture_sizes([100, 10, 50], [2, 1, 1], 100)
        [50, 25, 25]
    """
    if ratios is None:
        ratios = [1.0] * len(sizes)
    if len(ratios) != len(sizes):
        raise ConfigError(f"`ratios` must hold one number per dataset ({len(sizes)}), got {list(ratios)!r}")
    if (
        any(isinstance(r, bool) or not isinstance(r, int | float) or not r >= 0 for r in ratios)
        or sum(ratios) <= 0
    ):
        raise ConfigError(f"`ratios` must be non-negative numbers with a positive sum, got {list(ratios)!r}")
    exact = [total * r / sum(ratios) for r in ratios]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_datasets(
    datasets: Sequence[Dataset],
    *,
    ratios: Sequence[float] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A shuffled mixture of datasets with given shares.

    A dataset asked for more examples than it has is repeated (whole passes, then a random remainder); one
    asked for fewer is subsampled without replacement.

    Args:
        datasets: ``datasets.Dataset`` objects with the same columns (e.g. ``prompt`` and ``completion``).
        ratios: the share of each dataset (None: equal shares, the uniform mixture).
        num_samples: the mixture's size (None: the datasets' total size).
        seed: seeds the subsampling and the shuffle.

    Returns:
        The mixture, with a ``source`` column holding each example's dataset index.

    Raises:
        ConfigError: for no datasets, different columns, or bad ratios or sizes.
    """
    import numpy as np
    from datasets import concatenate_datasets

    if not datasets:
        raise ConfigError("`datasets` must hold at least one dataset, got none")
    columns = set(datasets[0].column_names)
    for index, dataset in enumerate(datasets):
        if set(dataset.column_names) != columns:
            raise ConfigError(
                f"`datasets[{index}]` has columns {sorted(dataset.column_names)}, but `datasets[0]` has "
                f"{sorted(columns)}; every dataset needs the same columns"
            )
        if len(dataset) == 0:
            raise ConfigError(f"`datasets[{index}]` is empty")
    total = sum(len(d) for d in datasets) if num_samples is None else num_samples
    check_int("num_samples", total, minimum=1)
    counts = mixture_sizes([len(d) for d in datasets], ratios, total)
    rng = np.random.default_rng(seed)
    parts = []
    for index, (dataset, count) in enumerate(zip(datasets, counts, strict=True)):
        passes, remainder = divmod(count, len(dataset))
        indices = [
            *np.tile(np.arange(len(dataset)), passes),
            *rng.choice(len(dataset), remainder, replace=False),
        ]
        part = dataset.select([int(i) for i in indices])
        parts.append(part.add_column("source", [index] * len(part)))
    logger.info("mixture of %d examples: %s per dataset", total, counts)
    return concatenate_datasets(parts).shuffle(seed=seed)


def mixture_trainer(
    model: PreTrainedModel,
    datasets: Sequence[Dataset],
    args: SFTConfig,
    *,
    processing_class: Any = None,
    ratios: Sequence[float] | None = None,
    num_samples: int | None = None,
    **trainer_kwargs: Any,
) -> SFTTrainer:
    """A TRL ``SFTTrainer`` whose training set is a mixture of ``datasets`` (the data-mixture baseline).

    Args:
        model: the base model.
        datasets: the task datasets, in any format ``SFTTrainer`` accepts (``text``, or ``prompt`` /
            ``completion``, or ``messages``), all with the same columns.
        args: the ``SFTConfig`` (its ``seed`` also seeds the mixture).
        processing_class: the tokenizer.
        ratios: the share of each dataset (None: the uniform mixture).
        num_samples: the mixture's size (None: the datasets' total size).
        **trainer_kwargs: passed to ``SFTTrainer`` (e.g. ``callbacks``).

    Returns:
        The trainer, not yet trained.
    """
    from trl.trainer.sft_trainer import SFTTrainer

    mixture = mix_datasets(datasets, ratios=ratios, num_samples=num_samples, seed=args.seed)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=mixture.remove_columns("source"),
        processing_class=processing_class,
        **trainer_kwargs,
    )


def train_on_mixture(
    model: PreTrainedModel,
    datasets: Sequence[Dataset],
    args: SFTConfig,
    *,
    processing_class: Any = None,
    ratios: Sequence[float] | None = None,
    num_samples: int | None = None,
    resume_from_checkpoint: str | bool | None = None,
    **trainer_kwargs: Any,
) -> SFTTrainer:
    """Train ``model`` in place on a mixture of ``datasets`` with TRL's ``SFTTrainer``.

    The arguments are those of :func:`mixture_trainer`, plus ``resume_from_checkpoint`` (a checkpoint
    folder, or True for the latest in ``args.output_dir``), passed to ``train()``. The mixture is drawn from
    ``args.seed``, so a resumed run sees the same examples as an uninterrupted one.

    Returns:
        The trainer, after ``train()``.

    Examples:
        >>> from trl import SFTConfig  # doctest: +SKIP
        >>> args = SFTConfig("out")  # doctest: +SKIP
        >>> trainer = train_on_mixture(model, [a, b, c], args, ratios=[2, 1, 1])  # doctest: +SKIP
    """
    trainer = mixture_trainer(
        model,
        datasets,
        args,
        processing_class=processing_class,
        ratios=ratios,
        num_samples=num_samples,
        **trainer_kwargs,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer
