"""The averaging baselines SeWA is compared against, over one window of K snapshots w_1 .. w_K (oldest first).

- ``last``: w_K, the last iterate (no averaging; the paper's "SGD" row).
- ``uniform``: (1/K) Σ_i w_i, SWA restricted to the window (reviewers asked for windows matched to SeWA's).
- ``lawa``: the mean of the latest k snapshots (LAWA, Kaddour 2022; Sanyal et al. 2024).
- ``ema``: e_1 = w_1, e_t = β e_{t-1} + (1 - β) w_t, returned at t = K; β defaults to 1 - 1/k (an effective
  window of k, the matching the paper note proposes).
- ``random``: the mean of k snapshots drawn uniformly without replacement (the paper's Random baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_literal, check_range
from paperpack.sewa.snapshots import check_snapshots, mean_of, weighted_average

__all__ = ["Strategy", "average_snapshots", "baseline_weights"]

Strategy = Literal["last", "uniform", "lawa", "ema", "random"]


def baseline_weights(
    num_snapshots: int,
    strategy: Strategy,
    k: int | None = None,
    decay: float | None = None,
    *,
    seed: int = 0,
) -> list[float]:
    """The weight each of the K snapshots (oldest first) gets under a baseline ``strategy``.

    Args:
        num_snapshots: The window size K.
        strategy: One of ``"last"``, ``"uniform"``, ``"lawa"``, ``"ema"``, ``"random"``.
        k: Snapshots kept by ``"lawa"`` and ``"random"`` (required there, 1 <= k <= K); for ``"ema"`` it sets
            the default decay 1 - 1/k; not allowed for ``"last"`` and ``"uniform"``.
        decay: β of ``"ema"``, in [0, 1). ``None``: 1 - 1/k.
        seed: Seed of ``"random"``'s draw.

    Returns:
        K non-negative weights summing to one.

    Raises:
        ConfigError: an unknown strategy, a missing or out-of-range ``k`` or ``decay``, or an argument given
            to a strategy that does not use it.

    Examples:
        >>> from paperpack.sewa.averaging import baseline_weights
        >>> baseline_weights(4, "lawa", k=2)
        [0.0, 0.0, 0.5, 0.5]
        >>> [round(w, 3) for w in baseline_weights(3, "ema", decay=0.5)]
        [0.25, 0.25, 0.5]
    """
    check_int("num_snapshots", num_snapshots, minimum=1)
    check_literal("strategy", strategy, Strategy)
    check_int("seed", seed, minimum=0)
    if k is not None:
        check_int("k", k, minimum=1, maximum=num_snapshots)
    if decay is not None and strategy != "ema":
        raise ConfigError(f"`decay` applies to strategy 'ema' only, got decay={decay!r} with {strategy!r}")
    if k is not None and strategy in ("last", "uniform"):
        raise ConfigError(
            f"`k` does not apply to strategy {strategy!r} (it uses the whole window), got k={k}"
        )
    size = num_snapshots
    if strategy == "last":
        return [0.0] * (size - 1) + [1.0]
    if strategy == "uniform":
        return [1.0 / size] * size
    if strategy in ("lawa", "random"):
        if k is None:
            raise ConfigError(
                f"strategy {strategy!r} needs `k`, the number of snapshots to keep (1 <= k <= K)"
            )
        if strategy == "lawa":
            return [0.0] * (size - k) + [1.0 / k] * k
        generator = torch.Generator().manual_seed(seed)
        chosen = set(torch.randperm(size, generator=generator)[:k].tolist())
        return [1.0 / k if i in chosen else 0.0 for i in range(size)]
    if decay is None:
        if k is None:
            raise ConfigError("strategy 'ema' needs `decay` (β in [0, 1)) or `k` (then β = 1 - 1/k)")
        decay = 1.0 - 1.0 / k
    check_range("decay", decay, 0.0, 1.0, high_inclusive=False)
    # Unrolling e_t = β e_{t-1} + (1 - β) w_t from e_1 = w_1: w_1 gets β^{K-1}, w_t gets (1-β) β^{K-t}.
    return [decay ** (size - 1)] + [(1.0 - decay) * decay ** (size - t) for t in range(2, size + 1)]


def average_snapshots(
    snapshots: Sequence[Mapping[str, Tensor]],
    strategy: Strategy,
    k: int | None = None,
    decay: float | None = None,
    *,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Average a window of snapshots with one of the baselines SeWA is compared against.

    Args:
        snapshots: K state dicts (oldest first) with equal keys, shapes and dtypes.
        strategy: ``"last"``, ``"uniform"``, ``"lawa"``, ``"ema"`` or ``"random"`` (see the module docstring).
        k: Snapshots kept by ``"lawa"`` / ``"random"``; sets ``"ema"``'s default decay 1 - 1/k.
        decay: β of ``"ema"``.
        seed: Seed of ``"random"``.

    Returns:
        A new state dict (the inputs are not modified). Equal-weight strategies return the exact mean
        ``torch.stack(chosen).mean(0)``; non-floating tensors come from the latest snapshot used.

    Raises:
        TypeError: ``snapshots`` is not a sequence of state dicts.
        ConfigError: an empty window or a bad ``strategy`` / ``k`` / ``decay``.
        CheckpointError: snapshots with different keys, shapes or dtypes.

    Examples:
        >>> import torch
        >>> from paperpack.sewa import average_snapshots
        >>> window = [{"w": torch.tensor([float(i)])} for i in range(5)]
        >>> average_snapshots(window, "lawa", k=2)["w"]
        tensor([3.5000])
        >>> average_snapshots(window, "uniform")["w"]
        tensor([2.])
    """
    check_snapshots(snapshots)
    weights = baseline_weights(len(snapshots), strategy, k, decay, seed=seed)
    if strategy == "ema":
        return weighted_average(snapshots, weights)
    return mean_of(snapshots, [i for i, weight in enumerate(weights) if weight > 0])
