"""Devices, dtypes, seeding and a memory meter shared by every package and benchmark."""

from __future__ import annotations

import os
import random
import re
import threading
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from paperpack.core.errors import ConfigError

__all__ = ["MemoryMeter", "format_bytes", "resolve_device", "resolve_dtype", "seed_everything"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a device into a usable device.

    ``"auto"`` picks CUDA when available, then MPS, then the CPU.

    Raises:
        ConfigError: for an unknown name, or a device this machine does not have.

    Examples:
        >>> from paperpack.core.device import resolve_device
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"`device` is {device!r} but CUDA is not available on this machine; use 'cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"`device` is {device!r} but this machine has {count} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"`device` is {device!r} but MPS is not available on this machine; use 'cpu'")
    elif resolved.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """Turn ``"auto"``, a dtype name (``"bf16"``, ``"float32"``, ...) or a dtype into a floating dtype.

    ``"auto"`` is bfloat16 on a CUDA device that supports it and float32 elsewhere.

    Raises:
        ConfigError: for an unknown name or a non-floating dtype.

    Examples:
        >>> import torch
        >>> from paperpack.core.device import resolve_dtype
        >>> resolve_dtype("bf16"), resolve_dtype("auto", device="cpu")
        (torch.bfloat16, torch.float32)
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"`dtype` must be a floating dtype, got {dtype}")
        return dtype
    if dtype == "auto":
        where = resolve_device(device if device is not None else "auto")
        if where.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        names = ", ".join(repr(name) for name in ["auto", *_DTYPES])
        raise ConfigError(f"`dtype` must be one of {names}, got {dtype!r}") from None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device included).

    Args:
        seed: the seed.
        deterministic: also make torch use deterministic algorithms (slower; errors on ops that have none).

    Raises:
        ConfigError: when ``seed`` is not a non-negative int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"`seed` must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def format_bytes(count: float) -> str:
    """Format a byte count in binary units: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size of this process (Linux); False where that is impossible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class MemoryMeter:
    """Measure peak memory inside a ``with`` block.

    On a CUDA device it reports peak allocated CUDA memory. On the CPU it reports the process's peak resident
    set size: tracemalloc cannot see torch's allocations. On Linux the kernel's own peak counter (VmHWM) is
    reset on entry and read on exit, so nothing is missed; elsewhere, and for a meter nested inside another,
    a thread samples the resident set size every ``interval`` seconds.

    Args:
        device: ``"auto"``, ``"cpu"`` or a CUDA device; the meter measures that device's memory.
        interval: sampling period in seconds, where sampling is needed.

    Attributes:
        start_bytes: memory in use when the block started.
        peak_bytes: the peak during the block.
        growth_bytes: ``peak_bytes - start_bytes``: what the block added at its worst.

    Examples:
        >>> import torch
        >>> from paperpack.core.device import MemoryMeter
        >>> with MemoryMeter("cpu") as meter:
        ...     x = torch.ones(64, 2**20, dtype=torch.uint8)  # 64 MiB, touched
        >>> meter.growth_bytes >= 60 * 2**20
        True
    """

    # The kernel's peak counter is per process: only the outermost CPU meter may reset it.
    _kernel_meters_active = 0

    def __init__(self, device: str | torch.device = "auto", *, interval: float = 0.001) -> None:
        self.device = resolve_device(device)
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self._kernel_peak = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def growth_bytes(self) -> int:
        """Peak minus start, in bytes."""
        return max(self.peak_bytes - self.start_bytes, 0)

    @property
    def peak_mib(self) -> float:
        """The peak in MiB."""
        return self.peak_bytes / 2**20

    @property
    def growth_mib(self) -> float:
        """The growth in MiB."""
        return self.growth_bytes / 2**20

    def _rss(self) -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._kernel_peak = MemoryMeter._kernel_meters_active == 0 and _reset_peak_rss()
            MemoryMeter._kernel_meters_active += self._kernel_peak
            self.start_bytes = self._rss()
            if not self._kernel_peak:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        self.peak_bytes = self.start_bytes
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
            return
        if self._kernel_peak:
            self.peak_bytes = max(self.peak_bytes, (_status_kib("VmHWM") or 0) * 1024)
            MemoryMeter._kernel_meters_active -= 1
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())

    def __repr__(self) -> str:
        return (
            f"MemoryMeter(device={self.device}, peak={format_bytes(self.peak_bytes)}, "
            f"growth={format_bytes(self.growth_bytes)})"
        )
