r"""The length-harmonizing reward and the training weights made from it (plain Python, no torch).

For a problem x with K reference samples y'_1..y'_K of token lengths L(y'_k) and correctness A(y'_k) ∈ {0, 1}:

- L_ref(x) = mean_k L(y'_k), A_ref(x) = mean_k A(y'_k)  (the reference's mean length and accuracy);
- R_LH(x, y) = L_ref(x) / L(y) − 1 + λ (A(x, y) − A_ref(x))  (the paper's length-harmonizing reward);
- the training weight w is R_LH clipped to [low, high] and z-scored over the whole data set (the official
  code: clip to [−2, 4], subtract the mean, divide by the population standard deviation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from paperpack.core.errors import ConfigError

__all__ = ["harmonized_weights", "length_harmonizing_reward", "reference_statistics"]

logger = logging.getLogger(__name__)


def reference_statistics(lengths: Sequence[int], correct: Sequence[bool]) -> tuple[float, float]:
    """L_ref and A_ref: the mean token length and the accuracy of one problem's K reference samples.

    Raises:
        ConfigError: for no samples, lists of different lengths, or a length < 1.

    Examples:
        >>> from paperpack.o1_pruner.reward import reference_statistics
        >>> reference_statistics([10, 20, 30, 40], [True, True, False, True])
        (25.0, 0.75)
    """
    _check_samples(lengths, correct)
    return sum(lengths) / len(lengths), sum(map(bool, correct)) / len(correct)


def length_harmonizing_reward(
    lengths: Sequence[int],
    correct: Sequence[bool],
    ref_length: float,
    ref_accuracy: float,
    *,
    lam: float,
) -> list[float]:
    r"""R_LH(x, y) = L_ref / L(y) − 1 + λ (A(y) − A_ref) for each sample y of one problem x.

    The reward before clipping and normalization. A sample shorter than the reference's mean earns a positive
    length term, a longer one a negative term (at most −1); a correct sample earns λ(1 − A_ref), which is
    large on problems the reference mostly fails, so hard problems are not over-shortened.

    Args:
        lengths: L(y), the token length of each sample (>= 1).
        correct: A(y), whether each sample is correct.
        ref_length: L_ref (> 0).
        ref_accuracy: A_ref, in [0, 1].
        lam: λ >= 0.

    Returns:
        One reward per sample.

    Raises:
        ConfigError: for λ < 0, a length < 1, L_ref <= 0, A_ref outside [0, 1], or lists of different lengths.

    Examples:
        >>> from paperpack.o1_pruner import length_harmonizing_reward
        >>> length_harmonizing_reward([50, 200], [True, False], 100.0, 0.5, lam=2.0)
        [2.0, -1.5]
    """
    _check_samples(lengths, correct)
    _check_lam(lam)
    if isinstance(ref_length, bool) or not isinstance(ref_length, int | float) or not ref_length > 0:
        raise ConfigError(f"`ref_length` (L_ref) must be > 0, got {ref_length!r}")
    if (
        isinstance(ref_accuracy, bool)
        or not isinstance(ref_accuracy, int | float)
        or not 0 <= ref_accuracy <= 1
    ):
        raise ConfigError(f"`ref_accuracy` (A_ref) must be in [0, 1], got {ref_accuracy!r}")
    return [
        ref_length / length - 1.0 + lam * (float(bool(right)) - ref_accuracy)
        for length, right in zip(lengths, correct, strict=True)
    ]


def harmonized_weights(
    rewards: Sequence[float], *, clip: Sequence[float] | None = (-2.0, 4.0), normalize: str = "zscore"
) -> list[float]:
    """The training weights: rewards clipped to ``clip`` and, with ``normalize="zscore"``, standardized.

    The z-score uses the mean and the population standard deviation of the clipped rewards of the whole data
    set (every problem's training samples together, as the official code does; under data parallelism gather
    every rank's rewards first). When they are all equal the standard deviation is 0: the weights are then
    all 0 (nothing to prefer), with a warning.

    Args:
        rewards: R_LH of every training sample.
        clip: ``(low, high)``, or None for no clipping.
        normalize: ``"zscore"`` or ``"none"``.

    Raises:
        ConfigError: for no rewards, a non-finite reward, a bad ``clip`` or ``normalize``.

    Examples:
        >>> from paperpack.o1_pruner.reward import harmonized_weights
        >>> harmonized_weights([-5.0, 1.0, 10.0], clip=(-2, 4), normalize="none")
        [-2.0, 1.0, 4.0]
        >>> [round(w, 4) for w in harmonized_weights([-5.0, 1.0, 10.0])]
        [-1.2247, 0.0, 1.2247]
    """
    if normalize not in ("zscore", "none"):
        raise ConfigError(f"`normalize` must be 'zscore' or 'none', got {normalize!r}")
    values = [float(r) for r in rewards]
    if not values:
        raise ConfigError("`rewards` is empty: there is no training sample to weight")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"`rewards` must be finite, got {[v for v in values if not math.isfinite(v)][:3]}")
    if clip is not None:
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ConfigError(f"`clip` must be (low, high) with low < high, got {tuple(clip)!r}")
        low, high = float(clip[0]), float(clip[1])
        values = [min(max(v, low), high) for v in values]
    if normalize == "none":
        return values
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if std == 0.0:
        logger.warning("every clipped reward equals %g: the z-scored weights are all 0", mean)
        return [0.0] * len(values)
    return [(v - mean) / std for v in values]


def _check_samples(lengths: Sequence[int], correct: Sequence[bool]) -> None:
    if len(lengths) != len(correct):
        raise ConfigError(f"`lengths` and `correct` differ in length: {len(lengths)} != {len(correct)}")
    if not lengths:
        raise ConfigError("`lengths` is empty: a problem needs at least one sample")
    bad = [n for n in lengths if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ConfigError(f"`lengths` must be token counts >= 1, got {bad[:3]}")


def _check_lam(lam: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ConfigError(f"`lam` (λ) must be a finite number >= 0, got {lam!r}")
