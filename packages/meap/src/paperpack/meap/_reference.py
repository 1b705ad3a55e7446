"""Slow, literal reference of MEAP's mask draw, for the tests.

It walks the batch position by position: for every sequence (a row, or a run of equal segment ids) it lists
the eligible positions (not protected, not among the sequence's last ``keep_last``), sorts them by
(random score, position) and masks the first ``⌊P·E⌋`` (or ``max(1, ⌊P·E⌋)``). It consumes the same random
integers as :func:`paperpack.meap.sample_mask` (one score per position, or per column when the pattern is
shared), so both draw the same mask; nothing else is shared with the fast code.
"""

from __future__ import annotations

import math
from decimal import Decimal

import torch

__all__ = ["reference_mask"]


def reference_mask(
    input_ids: torch.Tensor,
    *,
    ratio: float,
    generator: torch.Generator,
    protected: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    per_row_positions: bool = True,
    keep_last: int = 2,
    at_least_one: bool = False,
) -> torch.Tensor:
    """The MEAP mask of :func:`paperpack.meap.sample_mask`, written out position by position."""
    if ratio == 0:
        return torch.zeros(input_ids.shape, dtype=torch.bool)
    rows_ids = input_ids.reshape(-1, input_ids.shape[-1])
    rows, length = rows_ids.shape
    scores = torch.randint(0, 1 << 24, (rows if per_row_positions else 1, length), generator=generator)
    prot = None if protected is None else protected.reshape(rows, length)
    segs = None if segment_ids is None else segment_ids.reshape(rows, length)
    mask = torch.zeros((rows, length), dtype=torch.bool)
    for row in range(rows):
        row_scores = scores[row if per_row_positions else 0].tolist()
        runs, start = [], 0
        for t in range(1, length + 1):
            if t == length or (segs is not None and segs[row, t] != segs[row, t - 1]):
                runs.append((start, t))
                start = t
        for first, end in runs:
            eligible = [t for t in range(first, end - keep_last) if prot is None or not prot[row, t]]
            count = math.floor(Decimal(str(ratio)) * len(eligible))  # n = ⌊P·E⌋, exactly
            if at_least_one and eligible:
                count = max(1, count)
            for t in sorted(eligible, key=lambda t: (row_scores[t], t))[:count]:
                mask[row, t] = True
    return mask.reshape(input_ids.shape)
