"""The safetensors file format: header parsing with precise errors, and byte-level tensor IO.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (``{key: {"dtype", "shape",
"data_offsets"}}`` plus an optional ``"__metadata__"`` of strings), then the tensor bytes, densely packed.
The header is validated as the reference implementation does (offsets cover the data exactly, with no overlap
and no gap). No file is mapped as a whole: small tensors are read (``pread``), and each large tensor maps only
its own bytes, so the process's resident memory follows the tensors actually alive, which is what the
streaming helpers promise and what :class:`MemoryMeter` measures. Mapping is optional: a mapped tensor whose
file another process truncates dies with SIGBUS on its next access, a read one cannot.
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
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "C64": torch.complex64,
}
if hasattr(torch, "float8_e8m0fnu"):  # torch >= 2.7
    DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
#: Dtypes of the safetensors format that torch cannot hold one element per item (sub-byte floats), or that
#: this torch lacks.
UNSUPPORTED_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0")

# A header larger than this is not a real checkpoint (the reference implementation uses the same bound).
_MAX_HEADER_BYTES = 100_000_000
# Linux reads at most this many bytes per call.
_MAX_READ = 0x7FFF_F000
# Tensors at least this large are memory-mapped (when mapping is on) rather than read.
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
    size: int  # of the file, in bytes


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file ({why}); it may be truncated or corrupt: re-save it"
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def _read_exactly(fd: int, count: int, offset: int) -> bytes:
    data = os.pread(fd, count, offset)
    while len(data) < count:
        more = os.pread(fd, count - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def read_header(path: Path, fd: int | None = None) -> Header:
    """Parse and validate the header of ``path`` (or of the open file ``fd``), reading no tensor data.

    Raises:
        CheckpointError: when the file is truncated, corrupt, not safetensors, or holds a dtype this reader
            does not support; the message names the file and the problem.
    """
    if fd is None:
        with path.open("rb") as file:
            return read_header(path, file.fileno())
    size = os.fstat(fd).st_size
    prefix = _read_exactly(fd, 8, 0)
    if len(prefix) < 8:
        raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
        raise _corrupt(path, f"the header claims {header_len} bytes but the file has {size}")
    raw = _read_exactly(fd, header_len, 8)
    if len(raw) < header_len:
        raise _corrupt(path, f"the file ended inside the {header_len}-byte header")
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _corrupt(path, f"the header is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors = {key: _tensor_info(path, key, entry, data_start) for key, entry in parsed.items()}
    _check_layout(path, tensors, size - data_start, data_start)
    return Header(path=path, tensors=tensors, metadata=dict(metadata), size=size)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(path: Path, key: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise _corrupt(path, f"entry {key!r} is malformed: {entry!r}")
    name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(_is_int(dim) and dim >= 0 for dim in shape)):
        raise _corrupt(path, f"entry {key!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _corrupt(path, f"entry {key!r} has data_offsets {offsets!r}, not two integers")
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        known = "a dtype of the safetensors format that" if name in UNSUPPORTED_DTYPES else "not a dtype"
        raise CheckpointError(
            f"{path}: tensor {key!r} has dtype {name!r}, {known} this reader does not support "
            f"(supported: {', '.join(DTYPES)})"
        )
    begin, stop = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if begin < 0 or stop - begin != nbytes:
        raise _corrupt(
            path, f"entry {key!r} has offsets {begin}..{stop} for {nbytes} bytes of {name} {list(shape)}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), start=data_start + begin, nbytes=nbytes)


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_size: int, data_start: int) -> None:
    """The tensors cover the data exactly: no overlap, no gap, nothing after the last (as the format says)."""
    end = 0
    previous = None
    for key, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].nbytes)):
        begin = info.start - data_start
        if begin < end:
            raise _corrupt(path, f"tensors {previous!r} and {key!r} overlap at data byte {begin}")
        if begin > end:
            raise _corrupt(path, f"data bytes {end}..{begin} before {key!r} belong to no tensor")
        end, previous = begin + info.nbytes, key
    if end > data_size:
        raise _corrupt(
            path, f"tensor data ends at byte {data_start + end} but the file has {data_start + data_size}"
        )
    if end < data_size:
        raise _corrupt(path, f"{data_size - end} bytes after the last tensor belong to no tensor")


def _truncated(path: Path, size: int, end: int) -> CheckpointError:
    return _corrupt(
        path,
        f"the file ends at byte {size} but a tensor ends at byte {end}; it was truncated since its header "
        "was read",
    )


def read_tensor(fd: int, info: TensorInfo, path: Path, *, mapped: bool = True) -> torch.Tensor:
    """Read one tensor from an open file descriptor into a new CPU tensor.

    With ``mapped``, large tensors are mapped, not copied: each gets its own private copy-on-write mapping of
    its bytes, released when the tensor is freed, so resident memory still follows the tensors alive and
    writes to the tensor never reach the file. Should another process truncate the file while such a tensor
    is alive, touching its lost pages raises SIGBUS. Without ``mapped``, or for small or misaligned tensors,
    the bytes are read (``pread``) into memory the tensor owns.

    Raises:
        CheckpointError: when the file ends before the tensor does (truncated since its header was read).
    """
    end = info.start + info.nbytes
    offset = info.start % mmap.ALLOCATIONGRANULARITY
    if mapped and info.nbytes >= _MAP_THRESHOLD and offset % info.dtype.itemsize == 0:
        size = os.fstat(fd).st_size
        if size < end:
            raise _truncated(path, size, end)
        try:
            mapping = mmap.mmap(fd, offset + info.nbytes, access=mmap.ACCESS_COPY, offset=info.start - offset)
        except (ValueError, OSError) as error:  # truncated in between, or an unmappable file
            raise _corrupt(
                path, f"the tensor's bytes {info.start}..{end} cannot be mapped: {error}"
            ) from None
        raw = torch.frombuffer(mapping, dtype=torch.uint8, count=info.nbytes, offset=offset)
        return raw.view(info.dtype).reshape(info.shape)
    buffer = torch.empty(info.nbytes, dtype=torch.uint8)
    view = buffer.numpy().data
    done = 0
    while done < info.nbytes:
        count = os.preadv(fd, [view[done : done + _MAX_READ]], info.start + done)
        if count == 0:
            raise _truncated(path, info.start + done, end)
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
