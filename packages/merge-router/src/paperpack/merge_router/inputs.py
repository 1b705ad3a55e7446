"""The experts as given: task names, and a key-by-key walk over model folders or state dicts in memory.

Folders (full models or PEFT LoRA adapters) are walked by paperpack-r-tsvm's public streaming walk
(:func:`paperpack.r_tsvm.walk_checkpoints`): one key's tensors in memory at a time, every key, shape, tied
head, LoRA target and vocabulary size checked from the headers before the first tensor is read. State dicts in
memory are checked the same way here, then walked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeAlias

import torch
from torch import Tensor

from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.r_tsvm import TensorGroup, walk_checkpoints

__all__ = ["ModelSource", "check_task_names", "is_path", "walk_experts"]

#: A model given as a folder (or ``.safetensors`` file) or as a state dict in memory.
ModelSource: TypeAlias = "str | os.PathLike[str] | Mapping[str, Tensor]"

_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_path(value: object) -> bool:
    """Whether ``value`` names a path (a ``str`` or ``os.PathLike``) rather than a state dict."""
    return isinstance(value, str | os.PathLike)


def check_task_names(experts: object, *, what: str = "experts") -> list[str]:
    """Check that ``experts`` maps at least two task names to models; return the names in order.

    A task name is 1 to 64 letters, digits, ``_``, ``-`` or ``.``, starting with a letter or digit: it names a
    file in the compiled folder and is typed after ``--task``.

    Raises:
        ConfigError: naming the bad name or the count.
    """
    if not isinstance(experts, Mapping):
        raise ConfigError(f"`{what}` must map task names to models, got {type(experts).__name__}")
    names = list(experts)
    if len(names) < 2:
        raise ConfigError(
            f"`{what}` must hold at least two tasks (Mediator routes between them), got {names}"
        )
    for name in names:
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ConfigError(
                f"task name {name!r} in `{what}` is not allowed: use 1 to 64 letters, digits, '_', '-' "
                "or '.', "
                "starting with a letter or digit"
            )
    return names


def _check_state_dicts(base: Mapping[str, Tensor], experts: Mapping[str, Mapping[str, Tensor]]) -> None:
    for name, state in experts.items():
        if not isinstance(state, Mapping):
            raise ConfigError(
                f"expert {name!r} must be a model folder or a state dict, got {type(state).__name__}"
            )
        missing = [key for key in base if key not in state]
        extra = [key for key in state if key not in base]
        if missing or extra:
            key, where = (
                (missing[0], "is in `base` but not in") if missing else (extra[0], "is not in `base` but in")
            )
            raise CheckpointError(
                f"mismatched architectures: {key!r} {where} expert {name!r} "
                f"({len(missing) + len(extra)} such "
                "key(s))"
            )
        for key, tensor in base.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"mismatched architectures: {key!r} has shape {list(state[key].shape)} in expert "
                    f"{name!r} "
                    f"but {list(tensor.shape)} in `base`"
                )


def walk_experts(
    base: ModelSource,
    experts: Mapping[str, ModelSource],
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Iterator[TensorGroup]:
    """Walk the base and the experts key by key: one :class:`~paperpack.r_tsvm.TensorGroup` per base key.

    Everything is checked before the first group is yielded.

    Args:
        base: θ_0, a model folder or a state dict.
        experts: task name → a model folder, a PEFT LoRA adapter folder or a state dict; all folders or all
            state dicts, the same kind as ``base``.
        device: where tensors are read to (folders).
        progress: show a progress bar over keys (folders).

    Raises:
        ConfigError: for bad task names, or folders mixed with state dicts.
        CheckpointNotFoundError: for a path that does not exist.
        CheckpointError: for experts whose keys or shapes differ from the base's.
    """
    names = check_task_names(experts)
    sources = [experts[name] for name in names]
    if is_path(base) and all(is_path(source) for source in sources):
        for path in (base, *sources):
            if not Path(path).exists():  # type: ignore[arg-type]
                raise CheckpointNotFoundError(f"{os.fspath(path)!r} does not exist")  # type: ignore[arg-type]
        yield from walk_checkpoints(
            [os.fspath(source) for source in sources],  # type: ignore[arg-type]
            base_model=os.fspath(base),  # type: ignore[arg-type]
            device=device,
            progress=progress,
        )
        return
    if is_path(base) or any(is_path(source) for source in sources):
        raise ConfigError("give `base` and every expert as model folders, or all as state dicts, not a mix")
    if not isinstance(base, Mapping):
        raise ConfigError(f"`base` must be a model folder or a state dict, got {type(base).__name__}")
    states: dict[str, Mapping[str, Tensor]] = dict(zip(names, sources, strict=True))  # type: ignore[arg-type]
    _check_state_dicts(base, states)
    for key, tensor in base.items():
        yield TensorGroup(key, tensor, [states[name][key] for name in names])
