"""Resume contract for Trainer callbacks (imports transformers; the light contracts live in ``contracts``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from paperpack.core.hf.callbacks import StatefulCallback
from paperpack.core.hf.training import training_args
from paperpack.core.testing.contracts import assert_states_equal

__all__ = ["StopAtStep", "check_callback_resume"]


class StopAtStep(TrainerCallback):
    """Stop training after ``step`` (as a crash right after that checkpoint would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Ask the Trainer to stop once ``step`` is reached (after it saves that step's checkpoint)."""
        if state.global_step >= self.step:
            control.should_training_stop = True


def check_callback_resume(
    make_callback: Callable[[], StatefulCallback],
    *,
    model_factory: Callable[[], PreTrainedModel],
    train_dataset: Any,
    tmp_path: Path,
    max_steps: int = 6,
    interrupt_at: int = 3,
    data_collator: Any = None,
    args_overrides: Mapping[str, Any] | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> tuple[StatefulCallback, StatefulCallback]:
    """Check that a callback resumed from a checkpoint ends in the same state as an uninterrupted run.

    Trains ``max_steps`` steps with one callback; then trains with a second callback, stopping right after
    the checkpoint at ``interrupt_at``; then resumes from that checkpoint with a third, fresh callback and a
    fresh model. Asserts the first and third callbacks' ``state_dict()`` are equal (tensors exactly).

    Returns:
        ``(uninterrupted, resumed)`` callbacks, for further assertions.
    """
    settings: dict[str, Any] = {
        "max_steps": max_steps,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": interrupt_at,
        "logging_steps": 1,
        "seed": 0,
        "data_seed": 0,
        "disable_tqdm": True,
        **(args_overrides or {}),
    }

    def train(folder: str, callback: StatefulCallback, stop: int | None, resume: str | None) -> None:
        callbacks: list[TrainerCallback] = [callback] + ([StopAtStep(stop)] if stop else [])
        trainer = trainer_cls(
            model=model_factory(),
            args=training_args(tmp_path / folder, **settings),
            train_dataset=train_dataset,
            data_collator=data_collator,
            callbacks=callbacks,
        )
        trainer.train(resume_from_checkpoint=resume)

    full = make_callback()
    train("full", full, None, None)
    train("interrupted", make_callback(), interrupt_at, None)
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{interrupt_at}"
    assert checkpoint.is_dir(), f"no checkpoint at step {interrupt_at} in {checkpoint.parent}"
    resumed = make_callback()
    train("interrupted", resumed, None, str(checkpoint))
    assert_states_equal(resumed.state_dict(), full.state_dict())
    return full, resumed
