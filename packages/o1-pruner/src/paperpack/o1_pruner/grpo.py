"""The length-harmonizing reward as a ``trl.GRPOTrainer`` reward function: the on-policy variant (ours).

The paper's released code is offline (samples from the frozen reference, :class:`O1PrunerTrainer`); its
objective, written with y ~ π_θ, also reads as an on-policy reward. This module offers that reading for TRL's
GRPO (or RLOO): the reward of each completion is R_LH with L_ref and A_ref read from the data set's columns
(per problem, from :func:`~paperpack.o1_pruner.presample`). It is our variant, not the paper's algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from paperpack.core.errors import ConfigError
from paperpack.o1_pruner.graders import Grader
from paperpack.o1_pruner.problems import grade
from paperpack.o1_pruner.reward import _check_lam
from paperpack.o1_pruner.reward import length_harmonizing_reward as harmonizing_reward

__all__ = ["length_harmonizing_reward_func"]

RewardFunc = Callable[..., list[float]]

_COLUMNS = ("answer", "ref_length", "ref_accuracy")


def length_harmonizing_reward_func(
    grader: Grader, *, lam: float = 2.0, clip: Sequence[float] | None = None
) -> RewardFunc:
    r"""A ``reward_funcs`` entry for ``trl.GRPOTrainer``: R_LH of each completion against the reference.

    The returned function takes TRL's arguments (``prompts``, ``completions``, ``completion_ids`` and the data
    set's columns as keyword arguments) and needs the columns ``answer``, ``ref_length`` (L_ref) and
    ``ref_accuracy`` (A_ref). It returns L_ref / L(y) − 1 + λ(A(y) − A_ref) per completion, with L(y) the
    number of completion tokens and A(y) = ``grader(completion, answer)``; optionally clipped. GRPO's
    group-relative advantage then plays the part of the offline z-score.

    Args:
        grader: ``(completion, answer) -> bool``.
        lam: λ >= 0.
        clip: ``(low, high)`` to clip each reward, or None (default: no clip; GRPO normalizes per group).

    Returns:
        The reward function (named ``length_harmonizing_reward`` in TRL's logs).

    Raises:
        ConfigError: for λ < 0 or a bad ``clip``; when called, for a missing column (naming it).

    Examples:
        >>> from paperpack.o1_pruner import last_number_grader, length_harmonizing_reward_func
        >>> reward = length_harmonizing_reward_func(last_number_grader, lam=2.0)
        >>> reward(prompts=["1+1="], completions=["2"], completion_ids=[[7, 2]], answer=["2"],
        ...        ref_length=[4.0], ref_accuracy=[0.5])
        [2.0]
    """
    _check_lam(lam)
    if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
        raise ConfigError(f"`clip` must be (low, high) with low < high, got {tuple(clip)!r}")

    def length_harmonizing_reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **columns: Any,
    ) -> list[float]:
        missing = [name for name in _COLUMNS if columns.get(name) is None]
        if missing:
            raise ConfigError(
                f"length_harmonizing_reward needs the data set columns {', '.join(missing)} (presample's "
                f"per-problem ref_length, ref_accuracy and the answer); it got {sorted(columns)}"
            )
        rewards = []
        for index, (completion, ids) in enumerate(zip(completions, completion_ids, strict=True)):
            text = completion if isinstance(completion, str) else completion[-1]["content"]
            right = grade(grader, text, columns["answer"][index], index, 0)
            (reward,) = harmonizing_reward(
                [max(len(ids), 1)],
                [right],
                float(columns["ref_length"][index]),
                float(columns["ref_accuracy"][index]),
                lam=lam,
            )
            rewards.append(reward if clip is None else min(max(reward, clip[0]), clip[1]))
        return rewards

    return length_harmonizing_reward
