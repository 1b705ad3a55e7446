"""Atomic, sharded, streaming writes of safetensors checkpoints.

Tensors are written into their shard as they arrive, behind room reserved for the header, so a writer holds
one tensor at a time; the header is written when the shard is full. Everything goes into a hidden staging
folder beside the output, flushed to the disk and moved into place only when complete
(:func:`paperpack.core.files.publish_output`): a crash, Ctrl-C or a power loss leaves the old output (or none)
and never a partial one. Outputs follow the core's output policy (:func:`paperpack.core.files.check_output`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch

from paperpack.core.checkpoints._format import DTYPE_NAMES, header_bytes, tensor_bytes, write_all
from paperpack.core.checkpoints.reader import PathLike
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.files import (
    OUTPUT_KEY,
    check_output,
    publish_output,
    remove_path,
    temporary_sibling,
)

__all__ = ["StateDictWriter", "parse_size", "save_state_dict"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Convert ``"5GB"``, ``"200MiB"`` or a byte count to bytes (decimal units as in transformers).

    Raises:
        ConfigError: for anything else.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        number = size
    else:
        match = _SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            raise ConfigError(f"`max_shard_size` must be a byte count or a size like '5GB', got {size!r}")
        number = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if number <= 0:
        raise ConfigError(f"`max_shard_size` must be positive, got {size!r}")
    return number


def _copy_range(source: BinaryIO, offset: int, target: BinaryIO, count: int) -> None:
    """Append ``count`` bytes of ``source`` from ``offset`` to ``target`` (inside the kernel if possible)."""
    source.flush()
    target.flush()
    done = 0
    while done < count:
        try:
            copied = os.copy_file_range(source.fileno(), target.fileno(), count - done, offset + done)
        except OSError:  # not supported by this filesystem: fall back to a buffered copy
            source.seek(offset + done)
            shutil.copyfileobj(source, target)
            return
        if copied == 0:
            raise CheckpointError(f"{source.name} ended after {done} of {count} bytes")
        done += copied


# Header space reserved in the first shard; later shards reserve twice the largest header seen.
_FIRST_RESERVE = 16 * 1024


class _Shard:
    """One safetensors file being written in place, tensor by tensor.

    The header precedes the data but is known only at the end, so ``reserve`` bytes are left for it and it
    is written last, padded with spaces (the format allows that). Should it outgrow the reservation, the
    file is rewritten once behind a header of the right size.
    """

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = reserve
        self.entries: dict[str, dict[str, Any]] = {}
        self.size = 0
        self._file = path.open("w+b")
        self._file.seek(8 + reserve)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        data = tensor_bytes(tensor)
        write_all(self._file, data)
        self.entries[key] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.size, self.size + len(data)],
        }
        self.size += len(data)

    def finish(self, metadata: dict[str, str]) -> int:
        """Write the header and close the file; return the header's length (without padding)."""
        header = header_bytes(self.entries, metadata)
        length = len(header) - 8
        if length <= self.reserve:
            header = header_bytes(self.entries, metadata, pad_to=self.reserve)
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
        else:
            rewritten = self.path.with_name(self.path.name + ".rewrite")
            with rewritten.open("wb") as file:
                file.write(header)
                _copy_range(self._file, 8 + self.reserve, file, self.size)
            self._file.close()
            os.replace(rewritten, self.path)
        return length

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".rewrite").unlink(missing_ok=True)


class StateDictWriter:
    """Write a state dict tensor by tensor, sharded, into place atomically.

    ``path`` ending in ``.safetensors`` gives one file. Any other ``path`` is a folder holding
    ``<stem>.safetensors``, or shards ``<stem>-00001-of-0000N.safetensors`` and
    ``<stem>.safetensors.index.json`` once the tensors exceed ``max_shard_size`` (the transformers layout,
    so ``from_pretrained`` reads it).

    The output holds exactly what this writer produced plus what the caller put into :attr:`staging_dir`
    (config and tokenizer files, say): nothing of an earlier output is carried over. It follows the output
    policy (:func:`paperpack.core.files.check_output`), checked when the writer is created: ``path`` must be
    new, an empty folder, or (with ``overwrite``) an earlier output of ``command``. A folder output gets the
    marker file ``.paperpack-output.json``; a single file records ``command`` in its ``__metadata__`` under
    ``paperpack_output``. Everything is flushed to the disk before the output is moved into place.

    Args:
        path: the output file or folder.
        max_shard_size: bytes per shard, as an int or a string like ``"5GB"`` (folders only).
        metadata: strings stored in every file's ``__metadata__`` (``format: pt`` is added).
        weights_name: the file name in a folder: ``model.safetensors`` or ``adapter_model.safetensors``.
        command: the command writing the output, recorded in its marker.
        overwrite: allow replacing an earlier output of ``command``.
        inputs: input paths that the output may not be, contain or lie inside.

    Raises:
        OutputExistsError: when ``path`` is taken (see :func:`paperpack.core.files.check_output`).
        CheckpointError: when ``path`` overlaps an input.

    Examples:
        >>> import tempfile, torch
        >>> from paperpack.core.checkpoints import StateDictWriter, load_state_dict
        >>> out = tempfile.mkdtemp() + "/merged"
        >>> with StateDictWriter(out, max_shard_size="1KB") as writer:
        ...     for i in range(3):
        ...         writer.add(f"layer{i}.weight", torch.full((16, 16), float(i)))
        >>> sorted(p.name for p in writer.path.glob("model-*"))[:2]
        ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors']
        >>> load_state_dict(out)["layer2.weight"][0, 0].item()
        2.0
    """

    def __init__(
        self,
        path: PathLike,
        *,
        max_shard_size: int | str = "5GB",
        metadata: Mapping[str, str] | None = None,
        weights_name: str = "model.safetensors",
        command: str = "paperpack",
        overwrite: bool = False,
        inputs: Iterable[PathLike] = (),
    ) -> None:
        self.path = Path(path)
        self.max_shard_size = parse_size(max_shard_size)
        self.metadata = {"format": "pt", **_check_metadata(metadata)}
        if not weights_name.endswith(".safetensors") or "/" in weights_name:
            raise ConfigError(
                f"`weights_name` must be a file name ending in .safetensors, got {weights_name!r}"
            )
        self.single_file = self.path.suffix == ".safetensors"
        self.command = command
        self.overwrite = overwrite
        if self.single_file:
            self.metadata[OUTPUT_KEY] = command
        self._stem = weights_name.removesuffix(".safetensors")
        check_output(
            self.path,
            command=command,
            overwrite=overwrite,
            inputs=inputs,
            flag="output",
            file=self.single_file,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = temporary_sibling(self.path)
        if not self.single_file:
            self._staging.mkdir()
        self._shards: list[_Shard] = []
        self._keys: set[str] = set()
        self._reserve = _FIRST_RESERVE
        # Finished shards are flushed to the disk in the background while the next ones are computed.
        self._flusher: ThreadPoolExecutor | None = None
        self._flushing: list[Future[None]] = []
        self._closed = False

    @property
    def staging_dir(self) -> Path:
        """The folder being written; files put here land in the output (folders only)."""
        if self.single_file:
            raise CheckpointError("a single-file writer has no staging folder")
        return self._staging

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Append one tensor; it is written to disk before this returns.

        Raises:
            CheckpointError: for a duplicate key, a non-tensor, or an unsupported dtype.
        """
        if self._closed:
            raise CheckpointError(f"the writer for {self.path} is closed")
        if not isinstance(key, str) or not key:
            raise CheckpointError(f"state dict keys must be non-empty strings, got {key!r}")
        if key in self._keys:
            raise CheckpointError(f"key {key!r} was written twice to {self.path}")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{key!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"{key!r} has dtype {tensor.dtype}, which safetensors cannot store")
        if tensor.is_sparse or tensor.layout != torch.strided:
            raise CheckpointError(f"{key!r} is a sparse tensor; convert it with .to_dense() first")
        nbytes = tensor.numel() * tensor.element_size()
        shard = self._shards[-1] if self._shards else None
        if shard is None or (
            not self.single_file and shard.entries and shard.size + nbytes > self.max_shard_size
        ):
            shard = self._new_shard()
        shard.add(key, tensor)
        self._keys.add(key)

    def _new_shard(self) -> _Shard:
        if self._shards:
            self._finish(self._shards[-1])
        if self.single_file:
            path = self._staging
        else:
            path = self._staging / f"{self._stem}-shard{len(self._shards):05d}.safetensors"
        shard = _Shard(path, self._reserve)
        self._shards.append(shard)
        return shard

    def close(self) -> Path:
        """Finish every shard, write the index and move the output into place.

        Raises:
            OutputExistsError: when the output path was taken since the writer was created; nothing is left
                behind.
        """
        if self._closed:
            return self.path
        try:
            self._close()
        except BaseException:
            self.abort()
            raise
        return self.path

    def _close(self) -> None:
        if not self._shards:
            self._new_shard()
        self._finish(self._shards[-1])
        self._wait_for_flushes()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        for number, shard in enumerate(self._shards, start=1):
            if not self.single_file:
                name = f"{self._stem}.safetensors"
                if count > 1:
                    name = f"{self._stem}-{number:05d}-of-{count:05d}.safetensors"
                shard.path.rename(self._staging / name)
                weight_map.update(dict.fromkeys(shard.entries, name))
        if count > 1:
            total = sum(shard.size for shard in self._shards)
            index = {"metadata": {**self.metadata, "total_size": total}, "weight_map": weight_map}
            (self._staging / f"{self._stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
        self._commit()
        self._closed = True

    def _finish(self, shard: _Shard) -> None:
        header = shard.finish(self.metadata)
        # Reserve twice the largest header seen for the next shard, so that rewrites stay rare.
        self._reserve = max(self._reserve, 2 * header + (-2 * header) % 8)
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paperpack-fsync")
        fd = os.open(shard.path, os.O_RDONLY)
        self._flushing.append(self._flusher.submit(_flush_and_close, fd))

    def _wait_for_flushes(self) -> None:
        """Wait for the background flushes (raising their first error) and stop the flushing thread."""
        try:
            for future in self._flushing:
                future.result()
        finally:
            self._flushing.clear()
            if self._flusher is not None:
                self._flusher.shutdown(wait=True)
                self._flusher = None

    def _commit(self) -> None:
        publish_output(
            self._staging, self.path, command=self.command, overwrite=self.overwrite, flag="output"
        )

    def abort(self) -> None:
        """Remove everything written so far; the output is left as it was."""
        with contextlib.suppress(OSError):  # what failed to flush is removed below
            self._wait_for_flushes()
        for shard in self._shards:
            shard.discard()
        remove_path(self._staging)
        self._closed = True

    def __enter__(self) -> StateDictWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _flush_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ConfigError(f"`metadata` must map strings to strings, got {metadata!r}")
    if OUTPUT_KEY in metadata:
        raise ConfigError(f"`metadata` may not set {OUTPUT_KEY!r}: the writer records the command there")
    return dict(metadata)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike,
    *,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
    weights_name: str = "model.safetensors",
    command: str = "paperpack",
    overwrite: bool = False,
) -> Path:
    """Save a state dict as safetensors, sharded with an index when over ``max_shard_size``, atomically.

    Tensors sharing storage (tied weights) are written as separate copies; the input is never modified.

    Args:
        state_dict: key to tensor.
        path: a ``.safetensors`` file or a folder (see :class:`StateDictWriter`).
        max_shard_size: bytes per shard, or a string like ``"5GB"``.
        metadata: strings stored in each file's header.
        weights_name: the file name inside a folder.
        command: the command writing the output, recorded in its marker.
        overwrite: allow replacing an earlier output of ``command`` (the output policy of
            :func:`paperpack.core.files.check_output`).

    Returns:
        The written path.

    Raises:
        OutputExistsError: when ``path`` is taken.

    Examples:
        >>> import tempfile, torch
        >>> from paperpack.core.checkpoints import load_state_dict, save_state_dict
        >>> path = save_state_dict({"bias": torch.zeros(4)}, tempfile.mkdtemp() + "/bias.safetensors")
        >>> load_state_dict(path)["bias"].shape
        torch.Size([4])
    """
    if not isinstance(state_dict, Mapping):
        raise ConfigError(f"`state_dict` must be a mapping of str to Tensor, got {type(state_dict).__name__}")
    with StateDictWriter(
        path,
        max_shard_size=max_shard_size,
        metadata=metadata,
        weights_name=weights_name,
        command=command,
        overwrite=overwrite,
    ) as w:
        for key, tensor in state_dict.items():
            w.add(key, tensor)
    return w.path
