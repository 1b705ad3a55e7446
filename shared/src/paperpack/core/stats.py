"""Summaries a demo reports: mean ± std over seeds, paired differences, smoothing, and claim tolerances.

Every demo compares a method with baselines over a few seeds. These helpers give that comparison one shape:
:func:`mean_std` for a value over seeds, :func:`paired_difference` for method minus baseline seed by seed (the
spread of a difference is what says whether a gap is noise), :func:`smooth` for noisy curves, and
:func:`at_least` / :func:`at_most` / :func:`within` for a claim's verdict with its tolerance written down.

Examples:
    >>> from paperpack.core.stats import at_least, mean_std, paired_difference
    >>> method, baseline = [0.91, 0.93, 0.92], [0.90, 0.93, 0.90]
    >>> str(mean_std(method))
    '0.9200 ± 0.0100'
    >>> str(paired_difference(method, baseline))
    '+0.0100 ± 0.0100 (>= 0 on 3/3 seeds)'
    >>> at_least(0.915, 0.92, tolerance=0.005)
    True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from paperpack.core.errors import ConfigError

__all__ = [
    "MeanStd",
    "PairedDifference",
    "at_least",
    "at_most",
    "mean_std",
    "paired_difference",
    "smooth",
    "standard_error",
    "within",
]


def _values(name: str, values: Sequence[float]) -> list[float]:
    numbers = [float(value) for value in values]
    if not numbers:
        raise ConfigError(f"`{name}` must hold at least one value")
    return numbers


@dataclass(frozen=True)
class MeanStd:
    """The mean and sample standard deviation (``ddof=1``; 0 for one value) of ``n`` values.

    ``str()`` gives ``"0.9200 ± 0.0100"``; :meth:`format` other precisions.
    """

    mean: float
    std: float
    n: int

    def format(self, digits: int = 4) -> str:
        """``"<mean> ± <std>"`` with ``digits`` decimals; the mean alone for one value."""
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def __str__(self) -> str:
        return self.format()


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation of ``values`` (one value: std 0).

    Raises:
        ConfigError: for no values.

    Examples:
        >>> from paperpack.core.stats import mean_std
        >>> mean_std([1.0, 2.0, 3.0]).format(2), mean_std([5.0]).format(1)
        ('2.00 ± 1.00', '5.0')
    """
    numbers = _values("values", values)
    spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    return MeanStd(statistics.fmean(numbers), spread, len(numbers))


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean: ``std / sqrt(n)`` (0 for one value)."""
    summary = mean_std(values)
    return summary.std / math.sqrt(summary.n)


@dataclass(frozen=True)
class PairedDifference:
    """Method minus baseline, seed by seed.

    Attributes:
        differences: one difference per seed.
        mean: their mean.
        std: their sample standard deviation.
        wins: seeds where the method was better (difference > 0, or < 0 when lower is better).
        ties: seeds with a difference of exactly 0.
        higher_is_better: whether a larger value is better.
    """

    differences: tuple[float, ...]
    mean: float
    std: float
    wins: int
    ties: int
    higher_is_better: bool = True

    @property
    def n(self) -> int:
        """The number of seeds."""
        return len(self.differences)

    def format(self, digits: int = 4) -> str:
        """The mean difference, its spread, and on how many seeds the method was at least as good.

        For example ``"+0.0100 ± 0.0100 (>= 0 on 3/3 seeds)"`` (``<= 0`` when lower is better).
        """
        relation = ">=" if self.higher_is_better else "<="
        spread = f"{self.mean:+.{digits}f} ± {self.std:.{digits}f}"
        return f"{spread} ({relation} 0 on {self.wins + self.ties}/{self.n} seeds)"

    def __str__(self) -> str:
        return self.format()


def paired_difference(
    method: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool = True
) -> PairedDifference:
    """Compare a method with a baseline seed by seed: the mean difference, its spread and the wins.

    Args:
        method: the method's value per seed.
        baseline: the baseline's value on the same seeds, in the same order.
        higher_is_better: whether a larger value is better (accuracy) or a smaller one (loss).

    Raises:
        ConfigError: for empty sequences or sequences of different lengths.

    Examples:
        >>> from paperpack.core.stats import paired_difference
        >>> result = paired_difference([1.0, 0.8], [0.9, 0.9], higher_is_better=False)
        >>> result.wins, result.format(2)
        (1, '+0.00 ± 0.14 (<= 0 on 1/2 seeds)')
    """
    ours, theirs = _values("method", method), _values("baseline", baseline)
    if len(ours) != len(theirs):
        raise ConfigError(
            f"`method` and `baseline` must hold one value per seed each, got {len(ours)} and {len(theirs)}"
        )
    differences = tuple(a - b for a, b in zip(ours, theirs, strict=True))
    summary = mean_std(differences)
    sign = 1.0 if higher_is_better else -1.0
    return PairedDifference(
        differences=differences,
        mean=summary.mean,
        std=summary.std,
        wins=sum(sign * d > 0 for d in differences),
        ties=sum(d == 0 for d in differences),
        higher_is_better=higher_is_better,
    )


def smooth(values: ArrayLike, window: int) -> NDArray[np.float64]:
    """Moving average along the last axis: element ``i`` is the mean of ``values[..., i : i + window]``.

    The result is ``window - 1`` shorter than the input (no padding at the start, so no made-up values); plot
    element ``i`` at step ``i + window - 1`` (:func:`paperpack.core.plotting.plot_mean_band` does). A window
    of 1, or one longer than the series, returns the values unchanged.

    Raises:
        ConfigError: for a window below 1.

    Examples:
        >>> from paperpack.core.stats import smooth
        >>> smooth([1.0, 2.0, 3.0, 4.0], 2).tolist()
        [1.5, 2.5, 3.5]
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"`window` must be an integer >= 1, got {window!r}")
    array = np.asarray(values, dtype=np.float64)
    if window == 1 or array.shape[-1] < window:
        return array
    sums = np.cumsum(array, axis=-1)
    sums = np.concatenate([np.zeros((*array.shape[:-1], 1)), sums], axis=-1)
    result: NDArray[np.float64] = (sums[..., window:] - sums[..., :-window]) / window
    return result


def _check_tolerance(tolerance: float) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise ConfigError(f"`tolerance` must be a number >= 0, got {tolerance!r}")


def at_least(value: float, reference: float, *, tolerance: float = 0.0) -> bool:
    """Whether ``value >= reference - tolerance``: the method matches or beats the baseline within a margin.

    NaN never holds.

    Examples:
        >>> from paperpack.core.stats import at_least, at_most
        >>> at_least(0.91, 0.92, tolerance=0.005), at_most(1.02, 1.0, tolerance=0.05)
        (False, True)
    """
    _check_tolerance(tolerance)
    return bool(value >= reference - tolerance)


def at_most(value: float, reference: float, *, tolerance: float = 0.0) -> bool:
    """Whether ``value <= reference + tolerance``: "no worse than the baseline" for a loss or a cost."""
    _check_tolerance(tolerance)
    return bool(value <= reference + tolerance)


def within(value: float, reference: float, *, tolerance: float) -> bool:
    """Whether ``|value - reference| <= tolerance``: "the two agree" (neutral effects, matching accuracy).

    Examples:
        >>> from paperpack.core.stats import within
        >>> within(0.502, 0.5, tolerance=0.01), within(float("nan"), 0.5, tolerance=1.0)
        (True, False)
    """
    _check_tolerance(tolerance)
    return bool(abs(value - reference) <= tolerance)
