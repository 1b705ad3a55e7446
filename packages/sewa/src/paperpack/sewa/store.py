"""Where SeWACallback keeps its window of snapshots: CPU memory, or safetensors files on disk.

In memory, the snapshots are CPU tensors and travel inside every Trainer checkpoint (they die with the
process otherwise). On disk (``offload_dir``), each snapshot is one ``snapshot-<step>.safetensors`` file
written atomically by the core's checkpoint IO, and a checkpoint records only the steps and file names;
resuming needs the same ``offload_dir`` with those files in it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from paperpack.core.checkpoints import PathLike, load_state_dict, save_state_dict
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["SnapshotStore"]

logger = logging.getLogger(__name__)


class SnapshotStore:
    """A bounded window of (step, state dict) pairs, oldest first.

    Args:
        capacity: The most snapshots kept; adding one more drops the oldest (its file too, when offloaded).
        offload_dir: Folder for the snapshot files; ``None`` keeps them in CPU memory.
        writer: Whether this process writes (and deletes) the files; under data parallelism only the main
            process does, and every process reads them.
    """

    def __init__(self, capacity: int, offload_dir: PathLike | None = None, *, writer: bool = True) -> None:
        self.capacity = capacity
        self.offload_dir = Path(offload_dir) if offload_dir is not None else None
        self.writer = writer
        self.steps: list[int] = []
        self._tensors: list[dict[str, Tensor]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def file_name(self, step: int) -> str:
        """The file of the snapshot taken at ``step``."""
        return f"snapshot-{step:09d}.safetensors"

    def add(self, step: int, snapshot: Mapping[str, Tensor]) -> None:
        """Keep a CPU copy of ``snapshot`` (or write it to disk), replacing one already taken at ``step``."""
        if step in self.steps:
            self._drop(self.steps.index(step), delete_file=False)
        if self.offload_dir is not None:
            if self.writer:
                save_state_dict(dict(snapshot), self.offload_dir / self.file_name(step), overwrite=True)
        else:
            self._tensors.append(
                {key: value.detach().to("cpu", copy=True) for key, value in snapshot.items()}
            )
        self.steps.append(step)
        while len(self.steps) > self.capacity:
            self._drop(0, delete_file=True)

    def _drop(self, position: int, *, delete_file: bool) -> None:
        step = self.steps.pop(position)
        if self.offload_dir is None:
            self._tensors.pop(position)
        elif delete_file and self.writer:
            (self.offload_dir / self.file_name(step)).unlink(missing_ok=True)

    def load(self) -> list[dict[str, Tensor]]:
        """Every snapshot, oldest first, as CPU tensors (read from disk when offloaded)."""
        if self.offload_dir is None:
            return list(self._tensors)
        return [load_state_dict(self._existing_file(self.offload_dir, step)) for step in self.steps]

    def _existing_file(self, folder: Path, step: int) -> Path:
        path = folder / self.file_name(step)
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"the SeWA snapshot of step {step} is missing: {path} does not exist (resuming needs the "
                "same `offload_dir` as the interrupted run, with its snapshot files)"
            )
        return path

    def state_dict(self) -> dict[str, Any]:
        """The steps, plus the tensors when they live in memory."""
        state: dict[str, Any] = {"steps": list(self.steps), "offloaded": self.offload_dir is not None}
        if self.offload_dir is None:
            state["snapshots"] = [dict(snapshot) for snapshot in self._tensors]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window saved by ``state_dict`` (checking that offloaded files still exist)."""
        offloaded = bool(state["offloaded"])
        if offloaded != (self.offload_dir is not None):
            where = "an `offload_dir`" if offloaded else "CPU memory"
            raise CheckpointError(
                f"the checkpoint's SeWA snapshots were kept in {where}; "
                "resume with the same `offload_dir` setting"
            )
        self.steps = [int(step) for step in state["steps"]]
        if self.offload_dir is None:
            self._tensors = [
                {key: torch.as_tensor(value) for key, value in s.items()} for s in state["snapshots"]
            ]
        else:
            for step in self.steps:
                self._existing_file(self.offload_dir, step)
