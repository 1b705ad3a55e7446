"""Contract checks that every package's tests reuse: equality of state dicts, resume, clean failure, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
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
from paperpack.core.testing.plugin import OFFLINE_ENV

__all__ = [
    "StopAtStep",
    "assert_no_partial_output",
    "assert_state_dicts_equal",
    "assert_states_equal",
    "check_callback_resume",
    "run_distributed",
]


def _prefixed(prefix: str) -> Callable[[str], str]:
    def message(detail: str) -> str:
        return f"{prefix}: {detail}"

    return message


def assert_state_dicts_equal(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> None:
    """Assert two state dicts have the same keys, dtypes, shapes and values (exactly, by default)."""
    assert set(actual) == set(expected), f"keys differ: {sorted(set(actual) ^ set(expected))[:5]}"
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, (
            f"{key}: {actual[key].dtype} != {expected[key].dtype}"
        )
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=rtol, msg=_prefixed(key))


def assert_states_equal(actual: Any, expected: Any, path: str = "state") -> None:
    """Assert two nested callback states (dicts, lists, tensors, JSON values) are equal, tensors exactly."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected a tensor, got {type(actual).__name__}"
        torch.testing.assert_close(
            actual.cpu(), expected.cpu(), atol=0.0, rtol=0.0, msg=lambda m: f"{path}: {m}"
        )
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{path}: expected a mapping, got {type(actual).__name__}"
        assert set(actual) == set(expected), f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            assert_states_equal(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple), f"{path}: expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{path}: lengths differ: {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_states_equal(a, e, f"{path}/{i}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


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


def assert_no_partial_output(path: str | os.PathLike[str]) -> None:
    """Assert nothing exists at ``path`` and no temporary sibling was left behind."""
    target = Path(path)
    assert not target.exists(), f"{target} exists after a failed write"
    leftovers = (
        [p.name for p in target.parent.glob(f".{target.name}.paperpack-*")] if target.parent.exists() else []
    )
    assert not leftovers, f"temporary files left beside {target}: {leftovers}"


def run_distributed(
    script: str | os.PathLike[str], *args: str, num_processes: int = 2, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` under ``accelerate launch --multi_gpu --num_processes N`` on the CPU (gloo), offline.

    CUDA is hidden from the processes, so the launch is a CPU data-parallel run on any machine; accelerate's
    ``--cpu`` flag would start a single process.

    Raises:
        AssertionError: with the captured output, when the launch fails.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert result.returncode == 0, (
        f"accelerate launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result
