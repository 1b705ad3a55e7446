"""MEAP input masking on plain tensors (arXiv:2502.07490, §3).

For a token sequence ``x_1 … x_T`` MEAP draws a set ``M`` of positions, replaces ``x_t`` by ``[MASK]`` for
``t ∈ M`` in the *input* only, and trains with the unchanged next-token loss
``-Σ_t log p(x_{t+1} | x̃_{≤t})`` on the original tokens. The logit at ``t-1`` still predicts the true
``x_t``; position ``t`` must predict ``x_{t+1}`` without seeing ``x_t``.

Positions are counted as in transformers (labels = input_ids, the model shifts): the last position of a
sequence has no target. The official pretraining code feeds ``x_1 … x_L`` and predicts ``x_2 … x_{L+1}``,
and samples masks from its first ``L − 1`` input positions, so the last position that *has* a target is never
masked either: here, the last two positions of every sequence (``keep_last=2``). Its SFT code samples from
every answer position, so the SFT collator keeps only the last position (``keep_last=1``).

These functions draw ``M``; they know nothing about tokenizers or trainers.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_range

__all__ = ["mask_inputs", "sample_mask"]

# Scores are integers in [0, 2**24); ineligible positions get a larger key, so they sort after every eligible
# one.
_SCORE_BITS = 24
# A ratio becomes an exact fraction with a bounded denominator so that ⌊P·E⌋ has no float surprises
# (0.29 * 100 == 28.999999999999996 in floating point).
_MAX_DENOMINATOR = 1_000_000


def _check_tensor(name: str, value: object, shape: torch.Size, *, boolean: bool) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    if boolean and value.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a boolean tensor, got dtype {value.dtype}")
    if not boolean and (value.dtype == torch.bool or value.is_floating_point() or value.is_complex()):
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {value.dtype}")
    if value.shape != shape:
        raise ConfigError(
            f"`{name}` must have the shape of `input_ids` {tuple(shape)}, got {tuple(value.shape)}"
        )
    return value


def _check_arguments(
    input_ids: object,
    *,
    ratio: float,
    generator: object,
    protected: torch.Tensor | None,
    segment_ids: torch.Tensor | None,
    flags: dict[str, object],
    keep_last: int,
) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"`input_ids` must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() not in (1, 2):
        raise ConfigError(f"`input_ids` must be 1-D or 2-D, got shape {tuple(input_ids.shape)}")
    check_range("ratio", ratio, 0.0, 1.0, high_inclusive=False)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    if protected is not None:
        _check_tensor("protected", protected, input_ids.shape, boolean=True)
    if segment_ids is not None:
        _check_tensor("segment_ids", segment_ids, input_ids.shape, boolean=False)
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(flag).__name__}")
    check_int("keep_last", keep_last, minimum=0)


def sample_mask(
    input_ids: torch.Tensor,
    *,
    ratio: float,
    generator: torch.Generator | None = None,
    protected: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    per_row_positions: bool = True,
    keep_last: int = 2,
    at_least_one: bool = False,
) -> torch.Tensor:
    """Draw the MEAP mask positions ``M``: a boolean tensor shaped like ``input_ids``.

    Every sequence (a row, or a segment of a packed row) has ``E`` eligible positions: those not
    ``protected`` and not among its last ``keep_last``. ``n = ⌊P·E⌋`` of them are drawn uniformly without
    replacement (``P`` = ``ratio``), or ``n = max(1, ⌊P·E⌋)`` with ``at_least_one`` (the official code's
    ``max(1, int(L·P))``; it differs only for sequences with fewer than ``1/P`` eligible positions).

    Args:
        input_ids: integer tensor ``(batch, length)`` or ``(length,)``; only its shape and device are used.
        ratio: the mask ratio ``P`` in ``[0, 1)``: the fraction of each sequence's eligible positions masked.
        generator: random generator (its device is used for the draw); ``None`` uses torch's global one.
        protected: boolean tensor shaped like ``input_ids``; ``True`` positions are never masked.
        segment_ids: integer tensor shaped like ``input_ids`` for packed rows: each run of equal ids in a
            row is one sequence, which gets its own count and whose last position is never masked.
        per_row_positions: ``False`` draws one random score per column shared by all rows, so rows with
            the same eligible positions get the same pattern (the official pretraining code's behaviour).
        keep_last: how many final positions of every sequence are never masked. 2 (default): the last
            position, which has no target when labels = input_ids, and the last one that has a target, as the
            official pretraining code; 1: the last only, as the official SFT code.
        at_least_one: mask at least one position of every sequence that has an eligible one (the official
            code's rule) instead of ``⌊P·E⌋``, which is 0 when ``E < 1/P``.

    Returns:
        A new boolean tensor, ``True`` where the input is to be replaced by ``[MASK]``.

    Raises:
        TypeError: for a non-tensor or a tensor of the wrong dtype.
        ConfigError: for a ratio outside ``[0, 1)`` or a shape mismatch.

    Examples:
        >>> import torch
        >>> from paperpack.meap import sample_mask
        >>> ids = torch.arange(22).unsqueeze(0)
        >>> int(sample_mask(ids, ratio=0.5, generator=torch.Generator().manual_seed(0)).sum())  # ⌊0.5·20⌋
        10
        >>> short = torch.arange(6).unsqueeze(0)  # 4 eligible positions: ⌊0.15·4⌋ = 0, or at least one
        >>> [int(sample_mask(short, ratio=0.15, at_least_one=rule).sum()) for rule in (False, True)]
        [0, 1]
    """
    _check_arguments(
        input_ids,
        ratio=ratio,
        generator=generator,
        protected=protected,
        segment_ids=segment_ids,
        flags={"per_row_positions": per_row_positions, "at_least_one": at_least_one},
        keep_last=keep_last,
    )
    device = input_ids.device
    if ratio == 0 or input_ids.numel() == 0:
        return torch.zeros(input_ids.shape, dtype=torch.bool, device=device)
    rows, length = input_ids.shape if input_ids.dim() == 2 else (1, input_ids.shape[0])

    starts = torch.zeros((rows, length), dtype=torch.bool, device=device)
    starts[:, 0] = True
    if segment_ids is not None:
        segments = segment_ids.reshape(rows, length).to(device)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    # Every sequence is a contiguous run of the flattened batch: number the runs, find each position's
    # distance to the end of its run, count E per run, and give every position the n of its own sequence.
    flat_starts = starts.reshape(-1)
    sequence = torch.cumsum(flat_starts, 0) - 1
    size = torch.bincount(sequence)
    positions = torch.arange(flat_starts.numel(), device=device)
    first = torch.cummax(torch.where(flat_starts, positions, 0), 0).values
    to_end = size.index_select(0, sequence) - 1 - (positions - first)
    eligible = (to_end >= keep_last).reshape(rows, length)
    if protected is not None:
        eligible &= ~protected.reshape(rows, length).to(device)

    eligible_count = torch.zeros(size.numel(), dtype=torch.long, device=device)
    eligible_count.scatter_add_(0, sequence, eligible.reshape(-1).long())
    fraction = Fraction(ratio).limit_denominator(_MAX_DENOMINATOR)
    count = (eligible_count * fraction.numerator) // fraction.denominator  # exact integer floor
    if at_least_one:
        count = torch.maximum(count, eligible_count.clamp(max=1))
    count_at = count.index_select(0, sequence).reshape(rows, length)

    draw_device = generator.device if generator is not None else device
    scores = (
        torch.randint(
            0,
            1 << _SCORE_BITS,
            (rows if per_row_positions else 1, length),
            generator=generator,
            device=draw_device,
            dtype=torch.long,
        )
        .to(device)
        .expand(rows, length)
    )
    if bool(((starts & (count_at > 0)).sum(dim=1) <= 1).all()):
        mask = _lowest_per_row(scores, eligible & (count_at > 0), count_at.amax(dim=1))
    else:
        mask = _lowest_per_sequence(scores, eligible, starts, count_at)
    return mask.reshape(input_ids.shape)


def _lowest_per_row(scores: torch.Tensor, candidates: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The ``count[r]`` candidates of every row ``r`` with the lowest (score, column).

    For rows whose candidates all belong to one sequence (unpacked batches): a partial top-k and one threshold
    per row, no full sort.
    """
    length = candidates.shape[1]
    columns = torch.arange(length, device=candidates.device)
    # (score, column) as one integer: distinct within a row, ordered like the reference's sort key; the
    # sentinel of non-candidates exceeds every candidate's key.
    keys = (scores * length + columns).masked_fill(~candidates, (1 << _SCORE_BITS) * length)
    largest = int(count.max())
    if largest == 0:
        return torch.zeros_like(candidates)
    lowest = torch.topk(keys, largest, dim=1, largest=False, sorted=True).values
    threshold = lowest.gather(1, (count - 1).clamp(min=0).unsqueeze(1))
    return (keys <= threshold) & (count > 0).unsqueeze(1)


def _lowest_per_sequence(
    scores: torch.Tensor, eligible: torch.Tensor, starts: torch.Tensor, count_at: torch.Tensor
) -> torch.Tensor:
    """The ``n`` eligible positions of every sequence with the lowest (score, column).

    For packed rows: one stable sort of every row by (sequence, score).
    """
    length = eligible.shape[1]
    local = torch.cumsum(starts, dim=1) - 1  # the sequence's index within its row
    keys = (local << (_SCORE_BITS + 1)) | scores.masked_fill(~eligible, 1 << _SCORE_BITS)
    order = torch.sort(keys, dim=1, stable=True).indices
    # The sort keeps every sequence's block at its own columns, so the rank of a sorted entry within its
    # sequence is its column minus the sequence's first column, and its sequence's n is count_at there.
    columns = torch.arange(length, device=eligible.device)
    first = torch.cummax(torch.where(starts, columns, 0), dim=1).values
    chosen = (columns - first) < count_at
    # scatter_ rather than advanced indexing: the latter is parallelised even for a few thousand elements
    # and becomes 1000x slower on a busy machine (measured: 28 ms vs 0.005 ms on 2 cores).
    return torch.zeros_like(chosen).scatter_(1, order, chosen)


def mask_inputs(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    ratio: float,
    generator: torch.Generator | None = None,
    protected: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    per_row_positions: bool = True,
    keep_last: int = 2,
    at_least_one: bool = False,
) -> torch.Tensor:
    """Return a copy of ``input_ids`` with the MEAP mask applied: ``x̃_t = [MASK]`` for ``t ∈ M``.

    The labels of a MEAP batch are the *unmasked* ``input_ids``; only the model input changes. ``M`` is drawn
    by :func:`sample_mask` (see there for ``protected``, ``segment_ids``, ``per_row_positions``,
    ``keep_last`` and ``at_least_one``): protected positions and the last two positions of every sequence
    (the last has no target; the official code never masks the last that has one) are never masked, and
    ``⌊P·E⌋`` of the ``E`` eligible positions of each sequence are.

    Args:
        input_ids: integer tensor ``(batch, length)`` or ``(length,)``; never modified.
        mask_token_id: id of the ``[MASK]`` token.
        ratio: the mask ratio ``P`` in ``[0, 1)``; ``0`` returns an unchanged copy (plain NTP).
        generator: random generator; ``None`` uses torch's global one.
        protected: boolean tensor shaped like ``input_ids``; ``True`` positions are never masked.
        segment_ids: segment ids of packed rows (see :func:`sample_mask`).
        per_row_positions: ``False`` shares one random pattern across rows (official pretraining parity).
        keep_last: final positions of every sequence never masked (see :func:`sample_mask`).
        at_least_one: at least one mask per sequence, the official count (see :func:`sample_mask`).

    Returns:
        A new tensor like ``input_ids``.

    Examples:
        >>> import torch
        >>> from paperpack.meap import mask_inputs
        >>> ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
        >>> out = mask_inputs(ids, mask_token_id=0, ratio=0.2, generator=torch.Generator().manual_seed(0))
        >>> int((out == 0).sum()), out[0, -2:].tolist()  # ⌊0.2·10⌋ masks; the last two positions are kept
        (2, [15, 16])
    """
    check_int("mask_token_id", mask_token_id, minimum=0)
    mask = sample_mask(
        input_ids,
        ratio=ratio,
        generator=generator,
        protected=protected,
        segment_ids=segment_ids,
        per_row_positions=per_row_positions,
        keep_last=keep_last,
        at_least_one=at_least_one,
    )
    return input_ids.masked_fill(mask, mask_token_id)
