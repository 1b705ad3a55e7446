"""The offline greedy comparator for regret: greedy over the partition matroid, with ``f_t`` known."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paperpack.ma_osma.objectives import SubmodularObjective
from paperpack.ma_osma.partition import Partition

__all__ = ["offline_greedy"]


def offline_greedy(objective: SubmodularObjective, blocks: Sequence[Sequence[int]] | Partition) -> list[int]:
    """Greedy selection of one action per agent, the ``1/(1+c)``-approximate offline comparator.

    ``N`` times: among agents without an action, take the (agent, action) pair of largest marginal gain
    ``f(S ∪ {v}) - f(S)``; ties go to the lowest agent, then the earliest action in its block. One batched
    oracle call per pick.

    Args:
        objective: the revealed ``f_t``.
        blocks: the agents' action sets (or a :class:`Partition`).

    Returns:
        One ground-set index per agent, in agent order.

    Examples:
        >>> import numpy as np
        >>> from paperpack.ma_osma import WeightedCoverage
        >>> covers = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
        >>> offline_greedy(WeightedCoverage(covers), [[0, 1], [2, 3]])
        [0, 3]
    """
    partition = blocks if isinstance(blocks, Partition) else Partition(blocks)
    partition.check_objective(objective)
    n_agents, width = partition.padded.shape
    chosen = np.full(n_agents, -1, dtype=np.int64)
    selected = np.zeros((1, objective.n), dtype=bool)
    waiting = np.arange(n_agents)
    while waiting.size:  # one pick per pass; the picked agent leaves `waiting`
        candidates = partition.padded[waiting]
        gains = objective.marginal_gains(selected, candidates.reshape(1, -1)).reshape(candidates.shape)
        flat = int(np.argmax(np.where(partition.valid[waiting], gains, -np.inf)))
        row, position = divmod(flat, width)
        chosen[waiting[row]] = candidates[row, position]
        selected[0, candidates[row, position]] = True
        waiting = waiting[np.arange(waiting.size) != row]
    return [int(a) for a in chosen]
