r"""Sparse experts: the top fraction of each expert's difference from the dense expert, and their application.

For a routed tensor with dense expert D (Mediator's "one dense expert") and expert θ_i:

\[ S_i = \mathrm{TopK}_{|\cdot|}(\theta_i - D,\ k), \qquad k = \lceil \delta N \rceil \]

kept exactly (k of the N entries, by magnitude, ties to the lower index, without rescaling; found chunk by
chunk, :mod:`paperpack.merge_router.topk`) and stored in COO form: the flat indices
(int32, or int64 for tensors of 2³¹ entries or more) and the values in the dense tensor's dtype. At inference
a routed tensor becomes \( W = D + \sum_i w_i S_i \).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from paperpack.merge_router import topk

__all__ = ["INDEX_SUFFIX", "VALUE_SUFFIX", "add_sparse", "extract_sparse", "index_dtype"]

#: The suffixes of a routed tensor's two entries in a sparse expert file: ``<key>.idx`` and ``<key>.val``.
INDEX_SUFFIX = ".idx"
VALUE_SUFFIX = ".val"


def index_dtype(numel: int) -> torch.dtype:
    """int32 for tensors of fewer than 2³¹ entries, else int64."""
    return torch.int32 if numel < 2**31 else torch.int64


def extract_sparse(
    expert: Tensor, dense: Tensor, density: float, *, chunk_size: int = topk.CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """S_i = TopK(θ_i − D, ⌈δN⌉) by magnitude: (flat indices in ascending order, values in D's dtype).

    Ties go to the lower index. The difference is computed in chunks of ``chunk_size`` entries: besides the
    result, no temporary holds more than a chunk.

    Examples:
        >>> import torch
        >>> idx, val = extract_sparse(torch.tensor([1.0, 5.0, -7.0, 2.0]), torch.zeros(4), 0.5)
        >>> idx.tolist(), val.tolist()
        ([1, 2], [5.0, -7.0])
    """
    dtype = torch.float64 if dense.dtype == torch.float64 else torch.float32
    flat_expert, flat_dense = expert.reshape(-1), dense.reshape(-1)
    numel = flat_dense.numel()
    pieces = topk.chunks(numel, chunk_size)

    def delta(piece: slice) -> Tensor:
        return flat_expert[piece].to(dtype) - flat_dense[piece].to(dtype)

    threshold = topk.magnitude_threshold(
        lambda: (topk.magnitude_bits(delta(piece)) for piece in pieces),
        numel,
        topk.kept_count(numel, density) if numel else 0,
        width=64 if dtype == torch.float64 else 32,
    )
    kept = topk.KeptMask(threshold)
    indices, values = [], []
    for piece in pieces:
        difference = delta(piece)
        where = kept(topk.magnitude_bits(difference)).nonzero().reshape(-1)
        indices.append((where + piece.start).to(index_dtype(numel)))
        values.append(difference[where].to(dense.dtype))
    if not pieces:
        return torch.zeros(0, dtype=index_dtype(numel)), torch.zeros(0, dtype=dense.dtype)
    return torch.cat(indices), torch.cat(values)


def add_sparse(weight: Tensor, experts: Iterable[tuple[Tensor, Tensor, float]]) -> Tensor:
    """W += Σ_i w_i S_i in place, for (indices, values, w_i) triples; returns ``weight``."""
    flat = weight.view(-1)
    for indices, values, scale in experts:
        flat.index_add_(0, indices.to(device=flat.device, dtype=torch.int64), values.to(flat), alpha=scale)
    return weight
