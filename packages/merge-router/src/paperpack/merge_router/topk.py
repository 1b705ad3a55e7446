"""Exact top-k by magnitude over a tensor read in chunks: the sign conflict's trim and the sparse experts.

Both keep the k = ⌈δN⌉ largest-magnitude entries of a difference of tensors (τ_i = θ_i − θ_0, or θ_i − D).
``torch.topk`` over the whole difference needs it in float32 plus topk's own buffers (about 25 bytes per
entry); here the difference is computed chunk by chunk from the stored tensors, so the temporaries are
bounded by :data:`CHUNK_SIZE` whatever the tensor's size:

1. the k-th largest magnitude t is found by a radix selection on the magnitudes' bit patterns (a non-negative
   IEEE float orders like its bits as an integer): one pass over the chunks per 16 bits (two for float32,
   four for float64), each a histogram of one 16-bit digit among the entries whose higher digits match;
2. an entry is kept when its magnitude is above t, or equal to t and among the first ones equal to t by flat
   index (ties go to the lower index: the literal references' rule), so exactly k entries are kept.

The result is exact and deterministic (``torch.topk`` leaves ties in an unspecified order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CHUNK_SIZE",
    "KeptMask",
    "MagnitudeThreshold",
    "chunks",
    "kept_count",
    "magnitude_bits",
    "magnitude_threshold",
    "top_magnitude_indices",
]

#: Entries per chunk: the temporaries of a selection are a few times this many (about 1 MB each).
CHUNK_SIZE = 2**18
_DIGIT = 16


def kept_count(numel: int, density: float) -> int:
    """K = ⌈δ·N⌉ entries of N kept at density δ (at least one; δ·N rounded to 6 decimals first).

    Examples:
        >>> kept_count(1000, 0.1), kept_count(7, 0.5), kept_count(3, 1e-6)
        (100, 4, 1)
    """
    return min(numel, max(1, math.ceil(round(density * numel, 6))))


def chunks(numel: int, size: int = CHUNK_SIZE) -> list[slice]:
    """Consecutive slices of at most ``size`` entries covering ``range(numel)``."""
    return [slice(start, min(start + size, numel)) for start in range(0, numel, size)]


def magnitude_bits(values: Tensor) -> Tensor:
    """|x| as int64 integers ordered like the magnitudes (the bit patterns of the non-negative floats)."""
    magnitude = values.abs()
    if magnitude.dtype == torch.float64:
        return magnitude.view(torch.int64)
    return magnitude.to(torch.float32).view(torch.int32).to(torch.int64)


@dataclass(frozen=True)
class MagnitudeThreshold:
    """The k largest magnitudes: every entry whose bits are above ``bits``, and the first ``ties`` equal."""

    bits: int
    ties: int

    @classmethod
    def keep_all(cls) -> MagnitudeThreshold:
        """Keeps every entry (k = N)."""
        return cls(bits=-1, ties=0)


def magnitude_threshold(
    bits_of_chunks: Callable[[], Iterator[Tensor]], numel: int, k: int, *, width: int = 32
) -> MagnitudeThreshold:
    """The threshold that keeps exactly the ``k`` largest of ``numel`` magnitudes, by radix selection.

    Args:
        bits_of_chunks: called once per 16-bit digit; yields the :func:`magnitude_bits` of every chunk.
        numel: the number of entries.
        k: how many to keep, in [1, numel].
        width: 32 for float32 magnitudes, 64 for float64.
    """
    if k >= numel:
        return MagnitudeThreshold.keep_all()
    bins = 1 << _DIGIT
    prefix, remaining = 0, k
    for shift in range(width - _DIGIT, -1, -_DIGIT):
        counts = torch.zeros(bins, dtype=torch.int64)
        for chunk in bits_of_chunks():
            bits = chunk[(chunk >> (shift + _DIGIT)) == prefix] if shift + _DIGIT < width else chunk
            counts += torch.bincount(((bits >> shift) & (bins - 1)).cpu(), minlength=bins)
        at_least = counts.flip(0).cumsum(0)  # at_least[j]: entries whose digit is >= bins - 1 - j
        j = int(torch.searchsorted(at_least, torch.tensor(remaining)))
        digit = bins - 1 - j
        remaining -= int(at_least[j] - counts[digit])
        prefix = (prefix << _DIGIT) | digit
    return MagnitudeThreshold(prefix, remaining)


@dataclass
class KeptMask:
    """Walks the chunks of one tensor in order and says which entries a :class:`MagnitudeThreshold` keeps."""

    threshold: MagnitudeThreshold
    _equal_seen: int = 0

    def __call__(self, bits: Tensor) -> Tensor:
        """The kept entries of the next chunk (chunks must come in flat-index order, each once)."""
        above = bits > self.threshold.bits
        if self.threshold.ties == 0:
            return above
        equal = bits == self.threshold.bits
        rank = equal.cumsum(0) + self._equal_seen  # 1-based rank among the entries equal to the threshold
        self._equal_seen += int(equal.sum())
        return above | (equal & (rank <= self.threshold.ties))


def top_magnitude_indices(values: Tensor, density: float, *, chunk_size: int = CHUNK_SIZE) -> Tensor:
    """The flat indices (int64, ascending) of the ``kept_count(numel, density)`` largest-magnitude entries.

    Ties go to the lower index.

    Examples:
        >>> top_magnitude_indices(torch.tensor([1.0, -3.0, 2.0, 3.0]), 0.5).tolist()
        [1, 3]
    """
    flat = values.reshape(-1)
    pieces = chunks(flat.numel(), chunk_size)
    if not pieces:
        return torch.zeros(0, dtype=torch.int64, device=flat.device)
    width = 64 if flat.dtype == torch.float64 else 32
    threshold = magnitude_threshold(
        lambda: (magnitude_bits(flat[piece]) for piece in pieces),
        flat.numel(),
        kept_count(flat.numel(), density),
        width=width,
    )
    kept = KeptMask(threshold)
    return torch.cat(
        [kept(magnitude_bits(flat[piece])).nonzero().reshape(-1) + piece.start for piece in pieces]
    )
