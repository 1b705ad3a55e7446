"""``MEAPEpochCallback``: tells MEAP collators the ``Trainer``'s epoch, so masks differ across epochs."""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.meap.collator import MEAPCollator, MEAPSFTCollator

__all__ = ["MEAPEpochCallback"]


class MEAPEpochCallback(TrainerCallback):
    """Calls ``set_epoch`` on MEAP collators at the start of every ``Trainer`` epoch.

    A collator draws a batch's masks from (seed, rank, epoch, the batch's tokens). Without the epoch, a batch
    that comes back in a later epoch gets the masks it had before; at one example per batch every example
    does, which is the official SFT code's static-mask quirk. With this callback the epoch is the Trainer's
    (``⌊state.epoch⌋``, also when resuming in the middle of an epoch), so masks change every epoch and a
    resumed run draws the masks of the uninterrupted one.

    Args:
        *collators: the :class:`~paperpack.meap.MEAPCollator` or :class:`~paperpack.meap.MEAPSFTCollator`
            objects the Trainer uses.

    Raises:
        TypeError: when a collator is not a MEAP collator.
        ConfigError: when training starts with persistent data-loader workers, which keep the collator they
            copied in the first epoch and would repeat its masks.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.meap import MEAPCollator, MEAPEpochCallback, add_mask_token
        >>> model, tokenizer = tiny_causal_lm()
        >>> _ = add_mask_token(tokenizer, model)
        >>> collator = MEAPCollator(tokenizer)
        >>> callback = MEAPEpochCallback(collator)  # Trainer(..., callbacks=[callback])
    """

    def __init__(self, *collators: MEAPCollator | MEAPSFTCollator) -> None:
        if not collators:
            raise TypeError("MEAPEpochCallback needs the collator(s) the Trainer uses, got none")
        for collator in collators:
            if not isinstance(collator, MEAPCollator | MEAPSFTCollator):
                raise TypeError(
                    "MEAPEpochCallback takes MEAPCollator or MEAPSFTCollator objects, got "
                    f"{type(collator).__name__}"
                )
        self.collators = collators

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Refuse persistent workers: they would keep the first epoch's copy of the collator."""
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise ConfigError(
                "`dataloader_persistent_workers` must be False with MEAPEpochCallback, got True with "
                f"{args.dataloader_num_workers} workers: persistent workers keep the collator they copied in "
                "the first epoch, so MEAP's masks would repeat every epoch"
            )

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Set the collators' epoch to the Trainer's."""
        epoch = math.floor(state.epoch or 0.0)
        for collator in self.collators:
            collator.set_epoch(epoch)
