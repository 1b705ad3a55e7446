"""Checks and averages over a window of snapshots (mappings from parameter names to tensors).

Every function here reads its inputs and never modifies them. Floating-point tensors are averaged; other
tensors (integer buffers such as step counters) cannot be averaged meaningfully and are taken from the latest
snapshot involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from paperpack.core.errors import CheckpointError, ConfigError

__all__ = ["SampleParameters", "StackedWindow", "check_snapshots", "mean_of", "weighted_average"]

Snapshot = Mapping[str, Tensor]


def check_snapshots(snapshots: object, *, name: str = "snapshots") -> list[str]:
    """Check that ``snapshots`` is a non-empty sequence of state dicts with equal keys, shapes and dtypes.

    Args:
        snapshots: The candidate window.
        name: The argument name used in error messages.

    Returns:
        The keys, in the order of the first snapshot.

    Raises:
        TypeError: ``snapshots`` is not a sequence of mappings from str to tensors.
        ConfigError: the sequence is empty.
        CheckpointError: two snapshots differ in keys, shapes or dtypes (the message names the key).
    """
    if isinstance(snapshots, str | bytes | Mapping) or not isinstance(snapshots, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence (list or tuple) of state dicts, got {type(snapshots).__name__}"
        )
    if len(snapshots) == 0:
        raise ConfigError(f"`{name}` is empty: the window must hold at least one snapshot")
    for index, snapshot in enumerate(snapshots):
        if not isinstance(snapshot, Mapping):
            raise TypeError(
                f"`{name}[{index}]` must be a mapping from str to Tensor, got {type(snapshot).__name__}"
            )
        for key, value in snapshot.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"`{name}[{index}][{key!r}]` must be a torch.Tensor, got {type(value).__name__}"
                )
    first = snapshots[0]
    keys = list(first.keys())
    if not keys:
        raise ConfigError(f"`{name}[0]` holds no tensors")
    for index, snapshot in enumerate(snapshots[1:], start=1):
        missing = [key for key in keys if key not in snapshot]
        extra = [key for key in snapshot if key not in first]
        if missing or extra:
            raise CheckpointError(
                f"`{name}[{index}]` has different keys from `{name}[0]`: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}"
            )
        for key in keys:
            a, b = first[key], snapshot[key]
            if a.shape != b.shape:
                raise CheckpointError(
                    f"`{name}[{index}][{key!r}]` has shape {tuple(b.shape)}, but `{name}[0][{key!r}]` has "
                    f"shape {tuple(a.shape)}"
                )
            if a.dtype != b.dtype:
                raise CheckpointError(
                    f"`{name}[{index}][{key!r}]` has dtype {b.dtype}, "
                    f"but `{name}[0][{key!r}]` has dtype {a.dtype}"
                )
    return keys


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype averages are computed in: float64 stays float64, every other float type uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mean_of(snapshots: Sequence[Snapshot], indices: Sequence[int]) -> dict[str, Tensor]:
    """Mean of ``snapshots[i]`` over ``indices``: w* = (1/k) Σ_{i ∈ indices} w_i, key by key.

    The mean is ``torch.stack(...).mean(0)`` in the accumulation dtype (float32 for half types), cast back to
    the snapshot dtype; a single index returns a copy of that snapshot bit for bit. Non-floating tensors come
    from the latest of the indexed snapshots.

    Args:
        snapshots: The window (already checked with ``check_snapshots``).
        indices: Positions in the window, at least one.

    Returns:
        A new state dict; the inputs are not modified.
    """
    chosen = [snapshots[i] for i in sorted(indices)]
    result: dict[str, Tensor] = {}
    for key, reference in chosen[0].items():
        if not reference.is_floating_point():
            result[key] = chosen[-1][key].clone()
            continue
        stacked = torch.stack([snapshot[key] for snapshot in chosen])
        result[key] = stacked.to(accumulation_dtype(reference.dtype)).mean(dim=0).to(reference.dtype)
    return result


def weighted_average(snapshots: Sequence[Snapshot], weights: Sequence[float]) -> dict[str, Tensor]:
    """Σ_i weights[i] · w_i, key by key, holding one accumulator per key (not a stacked window).

    Args:
        snapshots: The window (already checked with ``check_snapshots``).
        weights: One weight per snapshot; zero weights skip their snapshot. They are used as given (callers
            pass weights that sum to one).

    Returns:
        A new state dict; non-floating tensors come from the last snapshot with a non-zero weight.
    """
    used = [
        (snapshot, float(weight)) for snapshot, weight in zip(snapshots, weights, strict=True) if weight != 0
    ]
    if not used:
        raise ConfigError(f"`weights` must hold at least one non-zero weight, got {list(weights)}")
    result: dict[str, Tensor] = {}
    for key, reference in used[0][0].items():
        if not reference.is_floating_point():
            result[key] = used[-1][0][key].clone()
            continue
        accumulator = torch.zeros(
            reference.shape, dtype=accumulation_dtype(reference.dtype), device=reference.device
        )
        for snapshot, weight in used:
            accumulator.add_(snapshot[key].to(accumulator.dtype), alpha=weight)
        result[key] = accumulator.to(reference.dtype)
    return result


class StackedWindow:
    """The K snapshots flattened into one (K, P) matrix per dtype, so that a soft average is one product.

    Every floating key of a dtype gets a slice of that dtype's matrix; the matrix is filled in place (one copy
    of the window on ``device``, no transient second copy). Half-precision windows are stacked in float32, the
    dtype every product with them is computed in, so that no product converts the whole window again.

    Args:
        snapshots: The window (already checked with ``check_snapshots``).
        keys: The floating-point keys to stack.
        device: Where the matrices live.
    """

    def __init__(self, snapshots: Sequence[Snapshot], keys: Sequence[str], device: torch.device) -> None:
        self.size = len(snapshots)
        self.layout: dict[torch.dtype, list[tuple[str, int, int, torch.Size]]] = {}
        for key in keys:
            reference = snapshots[0][key]
            entries = self.layout.setdefault(reference.dtype, [])
            offset = entries[-1][1] + entries[-1][2] if entries else 0
            entries.append((key, offset, reference.numel(), reference.shape))
        self.matrices: dict[torch.dtype, Tensor] = {}
        for dtype, entries in self.layout.items():
            width = entries[-1][1] + entries[-1][2]
            matrix = torch.empty((self.size, width), dtype=accumulation_dtype(dtype), device=device)
            for row, snapshot in enumerate(snapshots):
                for key, offset, numel, _ in entries:
                    matrix[row, offset : offset + numel].copy_(snapshot[key].detach().reshape(-1))
            self.matrices[dtype] = matrix
        dtypes = {matrix.dtype for matrix in self.matrices.values()}
        # The dtype to hand coefficients in: that of the matrices when there is one (no conversion per call).
        self.coefficient_dtype = np.float32 if dtypes == {torch.float32} else np.float64

    def combine(self, coefficients: Tensor) -> dict[torch.dtype, Tensor]:
        """Σ_i c_i w_i for coefficients of shape (K,) or (M, K): flat (P,) or (M, P) tensors per dtype.

        Computed in the accumulation dtype (float32 for half-precision windows), then cast to the window's
        dtype.
        """
        result = {}
        for dtype, matrix in self.matrices.items():
            product = coefficients.to(device=matrix.device, dtype=matrix.dtype) @ matrix
            result[dtype] = product if product.dtype == dtype else product.to(dtype)
        return result

    def contract(self, gradients: Mapping[torch.dtype, Tensor]) -> Tensor:
        """<g, w_i> for every i, summed over dtypes: (…, P) per dtype -> (…, K), float64 on the CPU."""
        total: Tensor | None = None
        for dtype, gradient in gradients.items():
            matrix = self.matrices[dtype]
            part = (gradient.to(matrix.dtype) @ matrix.T).to("cpu", torch.float64)
            total = part if total is None else total + part
        if total is None:
            raise ConfigError("no gradient reached the averaged parameters")
        return total

    def unflatten(self, flats: Mapping[torch.dtype, Tensor]) -> dict[str, Tensor]:
        """Views of each key's slice, shaped like the snapshots (with a leading batch dimension if any)."""
        params = {}
        for dtype, entries in self.layout.items():
            flat = flats[dtype]
            batch = flat.shape[:-1]
            parts = flat.split([numel for _, _, numel, _ in entries], dim=-1)
            for (key, _, _, shape), part in zip(entries, parts, strict=True):
                params[key] = part.view(*batch, *shape)
        return params


class SampleParameters:
    """M soft averages of a window in fixed buffers, with each sample's parameters as autograd leaves on them.

    Built once per search, so that an iteration creates no leaves and no views: ``fill`` writes the M averages
    into the buffers in place (outside autograd), ``params[j]`` hands sample j's parameters to the loss (the
    same tensors at every iteration, leaves that view row j of their dtype's buffer), and ``gradients``
    gathers the gradients of those leaves back into one (M, P) matrix per dtype, ready for
    ``StackedWindow.contract``.

    Args:
        window: The stacked window.
        samples: M, the number of soft averages.
        fixed: Tensors handed to every sample's loss as they are (integer buffers, not averaged).
    """

    def __init__(self, window: StackedWindow, samples: int, fixed: Mapping[str, Tensor]) -> None:
        self.window = window
        self.samples = samples
        self.buffers: dict[torch.dtype, Tensor] = {}
        # leaves[j]: sample j's leaves, dtype by dtype in the window's layout order (that of ``gradients``).
        self.leaves: list[list[Tensor]] = [[] for _ in range(samples)]
        self.params: list[dict[str, Tensor]] = [{} for _ in range(samples)]
        with torch.no_grad():
            for dtype, entries in window.layout.items():
                matrix = window.matrices[dtype]
                buffer = torch.zeros((samples, matrix.shape[1]), dtype=dtype, device=matrix.device)
                self.buffers[dtype] = buffer
                for sample in range(samples):
                    parts = buffer[sample].split([numel for _, _, numel, _ in entries])
                    for (key, _, _, shape), part in zip(entries, parts, strict=True):
                        leaf = part.view(shape).requires_grad_(True)
                        self.leaves[sample].append(leaf)
                        self.params[sample][key] = leaf
        for params in self.params:
            params.update(fixed)
        self.all_leaves = [leaf for leaves in self.leaves for leaf in leaves]
        # positions[dtype]: where that dtype's leaves sit in ``all_leaves``, sample by sample.
        self.positions: dict[torch.dtype, list[int]] = {}
        for position, leaf in enumerate(self.all_leaves):
            self.positions.setdefault(leaf.dtype, []).append(position)

    def fill(self, coefficients: Tensor) -> None:
        """Write Σ_i c_ji w_i into row j of the buffers, for coefficients of shape (M, K) (as ``combine``)."""
        with torch.no_grad():
            for dtype, matrix in self.window.matrices.items():
                buffer = self.buffers[dtype]
                converted = coefficients.to(device=matrix.device, dtype=matrix.dtype)
                if buffer.dtype == matrix.dtype:
                    torch.matmul(converted, matrix, out=buffer)
                else:
                    buffer.copy_(converted @ matrix)

    def gradients(self, grads: Sequence[Tensor | None]) -> dict[torch.dtype, Tensor]:
        """The gradients of ``all_leaves`` (``None``: unused, read as 0) as one (M, P) matrix per dtype."""
        flat = [
            leaf.new_zeros(leaf.numel()) if grad is None else grad.reshape(-1)
            for leaf, grad in zip(self.all_leaves, grads, strict=True)
        ]
        return {
            dtype: torch.cat([flat[position] for position in positions]).view(self.samples, -1)
            for dtype, positions in self.positions.items()
        }
