"""Lazy, read-only access to safetensors checkpoints: one file, a sharded folder, or a model folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from paperpack.core.checkpoints._format import Header, TensorInfo, read_header, read_tensor
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["PICKLE_SUFFIXES", "WEIGHT_FILES", "LazyStateDict", "PathLike", "load_state_dict"]

PathLike = str | os.PathLike[str]

#: Pickle formats paperpack refuses to load (they can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Single-file weight names looked for in a model folder, in order.
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
_INDEX_SUFFIX = ".safetensors.index.json"


def _pickle_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a pickle checkpoint; paperpack reads safetensors only, because unpickling can run "
        "arbitrary code. Convert it once: `model.save_pretrained(folder, safe_serialization=True)` for a "
        "transformers model, or `paperpack.core.checkpoints.save_state_dict(torch.load(path, "
        "weights_only=True), 'model.safetensors')` for a plain state dict"
    )


def _locate(path: Path) -> tuple[Path, Path | None]:
    """Return ``(single_file, None)`` or ``(folder, index_file)`` for a checkpoint path."""
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        if path.name.endswith(_INDEX_SUFFIX):
            return path.parent, path
        if path.suffix in PICKLE_SUFFIXES:
            raise _pickle_error(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is not a checkpoint: expected a .safetensors file, a *{_INDEX_SUFFIX} index "
                "or a folder holding them"
            )
        return path, None
    indexes = sorted(path.glob(f"*{_INDEX_SUFFIX}"))
    if len(indexes) == 1:
        return path, indexes[0]
    if len(indexes) > 1:
        names = ", ".join(index.name for index in indexes)
        raise CheckpointError(f"{path} holds several shard indexes ({names}); pass the one to read")
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name, None
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return files[0], None
    if len(files) > 1:
        names = ", ".join(file.name for file in files)
        raise CheckpointError(f"{path} holds several .safetensors files without an index ({names})")
    pickles = sorted(file for file in path.iterdir() if file.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_error(pickles[0])
    raise CheckpointNotFoundError(f"{path} holds no .safetensors weights")


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only mapping over a safetensors checkpoint that loads one tensor per access.

    ``path`` is a ``.safetensors`` file, a ``*.safetensors.index.json`` file, or a folder holding either
    (a transformers model folder, a sharded folder, a PEFT adapter folder). Listing keys reads the index or
    the file headers only; ``state[key]`` reads that one tensor from disk. Each file is opened once, when its
    header is first needed, and its tensors come from that open file: a file replaced on disk meanwhile (say,
    by an atomic write of a new version) is still read whole from the version opened, and one truncated
    before a tensor is read raises :class:`CheckpointError`.

    Tensors of 1 MiB or more are memory-mapped by default (a private copy-on-write mapping of the tensor's
    own bytes, released with the tensor; writing to the tensor never changes the file), which is what makes
    the streaming average as fast as a plain load. As with any mapped read, including the safetensors
    library's default one, a process that truncates the file while such a tensor is alive makes the next
    access to it die with SIGBUS. ``mmap=False`` reads every tensor into memory it owns instead: safe
    against that, and slower (see the benchmarks page).

    Args:
        path: the checkpoint.
        device: where loaded tensors are placed.
        mmap: map tensors of 1 MiB or more instead of reading them.

    Raises:
        CheckpointNotFoundError: when ``path`` does not exist or holds no safetensors weights.
        CheckpointError: for a pickle file, or a corrupt, truncated or unsupported file (when its header is
            read, or a tensor of it); the message names the file and the problem.

    Examples:
        >>> import tempfile, torch
        >>> from paperpack.core.checkpoints import LazyStateDict, save_state_dict
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_state_dict({"w": torch.ones(2, 3)}, f"{folder}/model")
        >>> state = LazyStateDict(f"{folder}/model")
        >>> list(state), state.shape("w"), state["w"].sum().item()
        (['w'], (2, 3), 6.0)
    """

    def __init__(self, path: PathLike, *, device: str | torch.device = "cpu", mmap: bool = True) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.mmap = mmap
        location, index = _locate(self.path)
        self._open: dict[Path, tuple[int, Header]] = {}
        self._index_metadata: dict[str, str] = {}
        if index is None:
            header = self._header(location)
            self._file_of: dict[str, Path] = dict.fromkeys(header.tensors, location)
        else:
            self._file_of = self._read_index(location, index)

    def _read_index(self, folder: Path, index: Path) -> dict[str, Path]:
        try:
            content: Any = json.loads(index.read_text(encoding="utf-8"))
            weight_map = content["weight_map"]
            metadata = content.get("metadata") or {}
            if not isinstance(weight_map, dict) or not isinstance(metadata, dict):
                raise TypeError
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise CheckpointError(
                f"{index} is not a valid shard index (a JSON object with a 'weight_map' object)"
            ) from None
        self._index_metadata = {str(k): str(v) for k, v in metadata.items()}
        file_of: dict[str, Path] = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise CheckpointError(
                    f"{index} lists {name!r} for {key!r}; a shard must be a file name in {folder}"
                )
            shard = folder / name
            if not shard.is_file():
                raise CheckpointNotFoundError(f"{index} lists shard {name!r} for {key!r}, which is missing")
            file_of[str(key)] = shard
        # Group keys by shard so that walking them reads each file front to back.
        order = list(dict.fromkeys(file_of.values()))
        return dict(sorted(file_of.items(), key=lambda item: order.index(item[1])))

    def _file(self, file: Path) -> tuple[int, Header]:
        """The open file and its parsed header (opened on first use)."""
        entry = self._open.get(file)
        if entry is None:
            try:
                fd = os.open(file, os.O_RDONLY)
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"{file} (of checkpoint {self.path}) is missing") from None
            try:
                entry = self._open[file] = (fd, read_header(file, fd))
            except BaseException:
                os.close(fd)
                raise
        return entry

    def _header(self, file: Path) -> Header:
        return self._file(file)[1]

    def _info(self, key: str) -> TensorInfo:
        try:
            file = self._file_of[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in checkpoint {self.path}") from None
        header = self._header(file)
        if key not in header.tensors:
            raise CheckpointError(f"the index of {self.path} puts {key!r} in {file.name}, which lacks it")
        return header.tensors[key]

    @property
    def files(self) -> list[Path]:
        """The safetensors files behind this checkpoint, in order of first use."""
        return list(dict.fromkeys(self._file_of.values()))

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the (first) file, updated with the shard index's ``metadata``."""
        files = self.files
        merged = dict(self._header(files[0]).metadata) if files else {}
        merged.update(self._index_metadata)
        return merged

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key``, read from the file header."""
        return self._info(key).shape

    def dtype(self, key: str) -> torch.dtype:
        """The dtype of ``key``, read from the file header."""
        return self._info(key).dtype

    def nbytes(self, key: str) -> int:
        """The size of ``key`` in bytes, read from the file header."""
        return self._info(key).nbytes

    def __getitem__(self, key: str) -> torch.Tensor:
        info = self._info(key)
        file = self._file_of[key]
        tensor = read_tensor(self._file(file)[0], info, file, mapped=self.mmap)
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def __contains__(self, key: object) -> bool:
        return key in self._file_of

    def __repr__(self) -> str:
        return f"LazyStateDict({str(self.path)!r}, {len(self)} tensors in {len(self.files)} file(s))"

    def close(self) -> None:
        """Close the open files (reopened, and their headers read again, on the next access)."""
        for fd, _ in self._open.values():
            os.close(fd)
        self._open.clear()

    def __enter__(self) -> LazyStateDict:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_open", None):
            self.close()


def load_state_dict(
    path: PathLike, device: str | torch.device = "cpu", *, mmap: bool = True
) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors checkpoint (file, sharded folder or model folder).

    Args:
        path: the checkpoint, as for :class:`LazyStateDict`.
        device: where the tensors are placed.
        mmap: map tensors of 1 MiB or more instead of reading them (see :class:`LazyStateDict`).

    Returns:
        A plain ``dict`` from key to tensor.
    """
    with LazyStateDict(path, device=device, mmap=mmap) as state:
        return {key: state[key] for key in state}
