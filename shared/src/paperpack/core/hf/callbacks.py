"""A ``TrainerCallback`` whose state travels with every Trainer checkpoint and comes back on resume."""

from __future__ import annotations

import json
import logging
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from paperpack.core.checkpoints import load_state_dict, save_state_dict
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.files import atomic_write_text

__all__ = [
    "STATE_FOLDER",
    "ArgumentsAsJson",
    "StatefulCallback",
    "read_callback_state",
    "write_callback_state",
]

logger = logging.getLogger(__name__)

#: The folder inside a Trainer checkpoint that holds paperpack callback states.
STATE_FOLDER = "paperpack_callbacks"
_TENSOR = "__tensor__"


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON skeleton of ``value`` with every tensor moved into ``tensors`` under its path."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach()
        return {_TENSOR: path}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ConfigError(f"state entry {path!r}: dictionary keys must be strings")
        return {key: _flatten(item, f"{path}/{key}", tensors) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(item, f"{path}/{i}", tensors) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(
        f"state entry {path!r} is a {type(value).__name__}; a callback state may hold tensors, dicts, "
        "lists and JSON values (None, bool, int, float, str)"
    )


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {key: _unflatten(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def write_callback_state(state: dict[str, Any], folder: str | os.PathLike[str], name: str) -> None:
    """Write a callback state as ``<folder>/<name>.json`` plus ``<name>.safetensors`` for its tensors.

    Each file appears atomically (written under a temporary name, then renamed).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    if tensors:
        save_state_dict(tensors, folder / f"{name}.safetensors", overwrite=True)
    atomic_write_text(folder / f"{name}.json", json.dumps({"state": skeleton, "has_tensors": bool(tensors)}))


def read_callback_state(folder: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Read a state written by :func:`write_callback_state`.

    Raises:
        CheckpointNotFoundError: when ``folder`` holds no state called ``name``.
    """
    folder = Path(folder)
    index = folder / f"{name}.json"
    if not index.is_file():
        raise CheckpointNotFoundError(f"no callback state {name!r} in {folder}")
    content = json.loads(index.read_text())
    tensors = load_state_dict(folder / f"{name}.safetensors") if content["has_tensors"] else {}
    state: dict[str, Any] = _unflatten(content["state"], tensors)
    return state


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class StatefulCallback(TrainerCallback, ABC):
    """A ``TrainerCallback`` whose state is saved in every Trainer checkpoint and restored on resume.

    Subclasses implement :meth:`state_dict` and :meth:`load_state_dict`. On every save the state is
    written to ``<checkpoint>/paperpack_callbacks/<state_name>.{json,safetensors}`` by the main process only;
    when ``trainer.train(resume_from_checkpoint=...)`` resumes, every process reads it back in
    ``on_train_begin``. Subclasses that override ``on_save`` or ``on_train_begin`` call ``super()``.

    The checkpoint is found as ``<output_dir>/checkpoint-<global_step>`` (where the Trainer writes it and
    where ``resume_from_checkpoint=True`` looks); for a checkpoint moved elsewhere, set
    ``TrainingArguments.resume_from_checkpoint`` to its path as well.

    Examples:
        >>> import torch
        >>> from paperpack.core.hf import StatefulCallback
        >>> class StepCounter(StatefulCallback):
        ...     def __init__(self):
        ...         self.steps = 0
        ...         self.total = torch.zeros(())
        ...     def on_step_end(self, args, state, control, **kwargs):
        ...         self.steps += 1
        ...     def state_dict(self):
        ...         return {"steps": self.steps, "total": self.total}
        ...     def load_state_dict(self, state):
        ...         self.steps, self.total = state["steps"], state["total"]
        >>> StepCounter.state_name
        'step_counter'
    """

    #: The file name of this callback's state; defaults to the class name in snake_case.
    state_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_name" not in cls.__dict__:
            cls.state_name = _snake_case(cls.__name__)

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Return the state to checkpoint: tensors, dicts, lists and JSON values."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the state into the checkpoint the Trainer just saved (main process only)."""
        if state.is_world_process_zero:
            folder = (
                Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FOLDER
            )
            write_callback_state(self.state_dict(), folder, self.state_name)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Restore the state when the Trainer resumes from a checkpoint (every process)."""
        if state.global_step == 0:
            return
        candidates = [Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"]
        if isinstance(args.resume_from_checkpoint, str):
            candidates.insert(0, Path(args.resume_from_checkpoint))
        for checkpoint in candidates:
            if (checkpoint / STATE_FOLDER / f"{self.state_name}.json").is_file():
                self.load_state_dict(read_callback_state(checkpoint / STATE_FOLDER, self.state_name))
                logger.info("restored %s from %s", self.state_name, checkpoint)
                return
        searched = ", ".join(str(candidate) for candidate in candidates)
        raise CheckpointError(
            f"training resumed at step {state.global_step}, but no {type(self).__name__} state was found "
            f"(looked in {searched}); set TrainingArguments.resume_from_checkpoint to the checkpoint folder"
        )


class ArgumentsAsJson(TrainerCallback):
    """Replace the pickled ``training_args.bin`` of every checkpoint with ``training_args.json``.

    transformers pickles the arguments into each ``checkpoint-N`` folder; paperpack refuses to read pickles,
    and resuming never reads that file. Training commands pass this callback so that their output holds JSON
    (besides the Trainer's own optimizer and RNG state files).

    Examples:
        >>> from paperpack.core.hf import ArgumentsAsJson
        >>> callbacks = [ArgumentsAsJson()]  # Trainer(..., callbacks=callbacks)
    """

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Rewrite the arguments of the checkpoint just saved (main process only)."""
        from paperpack.core.hf.training import write_arguments_json

        if state.is_world_process_zero:
            folder = Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                write_arguments_json(args, folder)
