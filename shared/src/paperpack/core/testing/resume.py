"""Resume contracts: a resumed Trainer run ends where the uninterrupted one does (imports transformers).

:class:`StopAtStep` interrupts a run right after a checkpoint; :func:`check_trainer_resume` compares a resumed
run with an uninterrupted one (weights, optimizer and scheduler state, every stateful callback);
:func:`check_callback_resume` does so for one callback on the core's own tiny Trainer setup. The light
contracts live in :mod:`paperpack.core.testing.contracts`, which never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
from paperpack.core.testing.contracts import assert_state_dicts_equal, assert_states_equal

__all__ = ["ResumeCheck", "StopAtStep", "check_callback_resume", "check_trainer_resume"]


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


@dataclass
class ResumeCheck:
    """The trainers of :func:`check_trainer_resume`, for further assertions.

    Attributes:
        full: the uninterrupted run.
        interrupted: the run stopped right after the checkpoint at ``interrupt_at``.
        resumed: the run resumed from that checkpoint.
        checkpoint: the checkpoint folder it resumed from.
    """

    full: Trainer
    interrupted: Trainer
    resumed: Trainer
    checkpoint: Path


def _model(trainer: Trainer) -> torch.nn.Module:
    assert trainer.model is not None, "the Trainer has no model"
    return trainer.model


def _stateful(trainer: Trainer) -> dict[str, StatefulCallback]:
    return {
        callback.state_name: callback
        for callback in trainer.callback_handler.callbacks
        if isinstance(callback, StatefulCallback)
    }


def check_trainer_resume(
    make_trainer: Callable[[dict[str, Any], list[TrainerCallback]], Trainer],
    tmp_path: Path,
    *,
    max_steps: int = 6,
    interrupt_at: int = 3,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> ResumeCheck:
    """Check that a run interrupted after a checkpoint and resumed ends where an uninterrupted run does.

    Three runs are made with ``make_trainer(settings, callbacks)``, which must build a FRESH model and Trainer
    whose arguments include ``settings`` (``output_dir``, ``max_steps``, ``save_strategy``, ``save_steps``)
    and whose callbacks include ``callbacks``: an uninterrupted run; a run stopped right after the checkpoint
    at ``interrupt_at`` (:class:`StopAtStep`); a run resumed from that checkpoint.

    Compared between the resumed and the uninterrupted run: the model's weights, the optimizer's state
    (moments, step counts, learning rates), the scheduler's state, the global step, and the state of every
    :class:`StatefulCallback` the trainers hold. The resumed weights must also differ from those at the
    checkpoint, so a resume that trains no step fails.

    Args:
        make_trainer: builds a fresh model and Trainer from the given argument settings and callbacks.
        tmp_path: a folder for the runs (``full/``, ``interrupted/``).
        max_steps: steps of a whole run.
        interrupt_at: the step whose checkpoint the run resumes from.
        atol: absolute tolerance for weights and tensors of the optimizer state (exact by default).
        rtol: relative tolerance, likewise.

    Returns:
        The three trainers and the checkpoint, for further assertions.

    Examples:
        A package test::

            def test_resume(tiny_lm, tiny_lm_dataset, tiny_collator, tmp_path):
                def make(settings, callbacks):
                    args = training_args(per_device_train_batch_size=4, **settings)
                    return Trainer(model=copy.deepcopy(tiny_lm[0]), args=args, train_dataset=tiny_lm_dataset,
                                   data_collator=tiny_collator, callbacks=[MyCallback(), *callbacks])

                check_trainer_resume(make, tmp_path)
    """
    if not 0 < interrupt_at < max_steps:
        raise ValueError(f"`interrupt_at` must be in (0, max_steps={max_steps}), got {interrupt_at}")

    def settings(folder: str) -> dict[str, Any]:
        return {
            "output_dir": str(tmp_path / folder),
            "max_steps": max_steps,
            "save_strategy": "steps",
            "save_steps": interrupt_at,
        }

    full = make_trainer(settings("full"), [])
    full.train()
    interrupted = make_trainer(settings("interrupted"), [StopAtStep(interrupt_at)])
    interrupted.train()
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{interrupt_at}"
    assert checkpoint.is_dir(), f"no checkpoint at step {interrupt_at} in {checkpoint.parent}"
    assert interrupted.state.global_step == interrupt_at, (
        f"the interrupted run stopped at step {interrupted.state.global_step}, not {interrupt_at}"
    )
    at_checkpoint = {name: value.detach().clone() for name, value in _model(interrupted).state_dict().items()}
    resumed = make_trainer(settings("interrupted"), [])
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.state.global_step == full.state.global_step == max_steps
    final = _model(resumed).state_dict()
    assert_state_dicts_equal(final, _model(full).state_dict(), atol=atol, rtol=rtol)
    assert any(not torch.equal(final[name], value) for name, value in at_checkpoint.items()), (
        "the resumed run did not change the weights after the checkpoint"
    )
    assert resumed.optimizer is not None
    assert full.optimizer is not None
    assert_states_equal(resumed.optimizer.state_dict(), full.optimizer.state_dict(), "optimizer")
    if full.lr_scheduler is not None:
        assert resumed.lr_scheduler is not None
        assert_states_equal(resumed.lr_scheduler.state_dict(), full.lr_scheduler.state_dict(), "scheduler")
    callbacks, expected = _stateful(resumed), _stateful(full)
    assert set(callbacks) == set(expected), (
        f"stateful callbacks differ: {sorted(set(callbacks) ^ set(expected))}"
    )
    for name, callback in callbacks.items():
        assert_states_equal(callback.state_dict(), expected[name].state_dict(), name)
    return ResumeCheck(full=full, interrupted=interrupted, resumed=resumed, checkpoint=checkpoint)
