"""The safetensors file format: header parsing with precise errors, and byte-level tensor IO.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (``{key: {"dtype", "shape",
"data_offsets"}}`` plus an optional ``"__metadata__"`` of strings), then the tensor bytes, densely packed.
No file is mapped as a whole: small tensors are read, and each large tensor maps only its own bytes, so the
process's resident memory follows the tensors actually alive, which is what the streaming helpers promise and
what :class:`MemoryMeter` measures.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from paperpack.core.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

# A header larger than this is not a real checkpoint (the reference implementation uses the same bound).
_MAX_HEADER_BYTES = 100_000_000
# Linux reads at most this many bytes per call.
_MAX_READ = 0x7FFF_F000
# Tensors at least this large are memory-mapped rather than read.
_MAP_THRESHOLD = 1 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class Header:
    """The parsed header of one safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file ({why}); it may be truncated or corrupt: re-save it"
    )


def read_header(path: Path) -> Header:
    """Parse and validate the header of ``path``, reading no tensor data.

    Raises:
        CheckpointError: when the file is truncated, corrupt or not safetensors.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise _corrupt(path, f"the header claims {header_len} bytes but the file has {size}")
        raw = file.read(header_len)
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(path, f"the header is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in parsed.items():
        info = _tensor_info(path, key, entry, data_start)
        tensors[key] = info
        end = max(end, info.start + info.nbytes - data_start)
    if data_start + end > size:
        raise _corrupt(path, f"tensor data ends at byte {data_start + end} but the file has {size}")
    if data_start + end < size:
        raise _corrupt(path, f"{size - data_start - end} bytes after the last tensor belong to no tensor")
    return Header(path=path, tensors=tensors, metadata=dict(metadata))


def _tensor_info(path: Path, key: str, entry: Any, data_start: int) -> TensorInfo:
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = tuple(int(dim) for dim in entry["shape"])
        begin, stop = (int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise _corrupt(path, f"entry {key!r} is malformed: {entry!r}") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if begin < 0 or stop - begin != nbytes or any(dim < 0 for dim in shape):
        raise _corrupt(path, f"entry {key!r} has offsets {begin}..{stop} for {nbytes} bytes")
    return TensorInfo(dtype=dtype, shape=shape, start=data_start + begin, nbytes=nbytes)


def read_tensor(fd: int, info: TensorInfo, path: Path) -> torch.Tensor:
    """Read one tensor from an open file descriptor into a new CPU tensor.

    Large tensors are mapped, not copied: each gets its own private copy-on-write mapping of its bytes, which
    is released when the tensor is freed, so resident memory still follows the tensors alive. Writes to the
    tensor never reach the file.
    """
    offset = info.start % mmap.ALLOCATIONGRANULARITY
    if info.nbytes >= _MAP_THRESHOLD and offset % info.dtype.itemsize == 0:
        mapping = mmap.mmap(fd, offset + info.nbytes, access=mmap.ACCESS_COPY, offset=info.start - offset)
        raw = torch.frombuffer(mapping, dtype=torch.uint8, count=info.nbytes, offset=offset)
        return raw.view(info.dtype).reshape(info.shape)
    buffer = torch.empty(info.nbytes, dtype=torch.uint8)
    view = buffer.numpy().data
    done = 0
    while done < info.nbytes:
        count = os.preadv(fd, [view[done : done + _MAX_READ]], info.start + done)
        if count == 0:
            raise _corrupt(path, f"the file ended while reading a tensor at byte {info.start + done}")
        done += count
    return buffer.view(info.dtype).reshape(info.shape)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Return the raw little-endian bytes of ``tensor`` (a copy only when it is not contiguous on the CPU)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def header_bytes(entries: dict[str, dict[str, Any]], metadata: dict[str, str], pad_to: int = 0) -> bytes:
    """Serialize a header, padded with spaces to ``pad_to`` bytes or at least to an 8-byte boundary.

    The format allows trailing spaces in the header; padding keeps the tensor data 8-byte aligned and lets a
    writer reserve the header's room before it knows the header.
    """
    body: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    body.update(entries)
    raw = json.dumps(body, separators=(",", ":")).encode()
    raw += b" " * max(pad_to - len(raw), -len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_all(file: BinaryIO, data: memoryview) -> None:
    """Write every byte of ``data``."""
    done = 0
    while done < len(data):
        done += file.write(data[done:])
