"""The agents' disjoint action sets ``V_1, ..., V_N`` (a partition matroid) in padded array form.

Every algorithm works on an ``(N, K)`` array whose row ``i`` lists agent ``i``'s actions, ``K = max |V_i|``;
shorter rows are padded with their own first action and masked by ``valid``. This keeps each round a handful
of array operations whatever the block sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from paperpack.core.errors import ConfigError
from paperpack.ma_osma.objectives import SubmodularObjective

__all__ = ["Partition"]

_PROTOCOL_MEMBERS = ("n", "value", "values", "marginal_gains")


class Partition:
    """Validated blocks: non-empty, disjoint lists of non-negative integer ground-set indices.

    Args:
        blocks: one list of ground-set indices per agent.

    Attributes:
        blocks: the blocks as tuples, in agent order.
        n_agents: ``N``.
        min_ground_size: ``1 + max index``; an objective must have at least this many items.
        sizes: ``|V_i|`` per agent, shape ``(N,)``.
        padded: shape ``(N, K)``, row ``i`` = ``V_i`` padded with ``V_i[0]``.
        valid: shape ``(N, K)``, ``True`` on real (unpadded) entries.

    Examples:
        >>> Partition([[0, 1], [2]]).padded.tolist()
        [[0, 1], [2, 2]]
    """

    def __init__(self, blocks: Sequence[Sequence[int]]) -> None:
        if isinstance(blocks, str | bytes) or not isinstance(blocks, Sequence) or len(blocks) == 0:
            raise ConfigError(
                f"`blocks` must be a non-empty list of lists of ground-set indices, got {blocks!r}"
            )
        parsed: list[tuple[int, ...]] = []
        owner: dict[int, int] = {}
        for i, block in enumerate(blocks):
            if isinstance(block, str | bytes) or not isinstance(block, Sequence | np.ndarray):
                raise ConfigError(f"`blocks[{i}]` must be a list of ground-set indices, got {block!r}")
            if len(block) == 0:
                raise ConfigError(f"`blocks[{i}]` is empty: every agent needs at least one action")
            items: list[int] = []
            for item in block:
                if isinstance(item, bool) or not isinstance(item, int | np.integer) or item < 0:
                    raise ConfigError(f"`blocks[{i}]` must hold non-negative integers, got {item!r}")
                if int(item) in owner:
                    raise ConfigError(
                        f"`blocks` must be disjoint: index {int(item)} is in blocks[{owner[int(item)]}] and "
                        f"blocks[{i}]"
                    )
                owner[int(item)] = i
                items.append(int(item))
            parsed.append(tuple(items))
        self.blocks: tuple[tuple[int, ...], ...] = tuple(parsed)
        self.n_agents = len(parsed)
        self.min_ground_size = max(owner) + 1
        self.sizes: NDArray[np.int64] = np.array([len(b) for b in parsed], dtype=np.int64)
        width = int(self.sizes.max())
        self.padded: NDArray[np.int64] = np.array([list(b) + [b[0]] * (width - len(b)) for b in parsed])
        self.valid: NDArray[np.bool_] = np.arange(width)[None, :] < self.sizes[:, None]

    def check_objective(self, objective: SubmodularObjective) -> None:
        """Check that ``objective`` is a :class:`SubmodularObjective` whose ground set holds every block.

        Raises:
            TypeError: when it lacks the protocol's methods.
            ConfigError: when its ground set is too small.
        """
        # What `isinstance(objective, SubmodularObjective)` checks, at a fraction of its cost in every round.
        if not all(hasattr(objective, name) for name in _PROTOCOL_MEMBERS):
            raise TypeError(
                "`objective` must implement SubmodularObjective (n, value, values, marginal_gains), got "
                f"{type(objective).__name__}"
            )
        if objective.n < self.min_ground_size:
            raise ConfigError(
                f"the objective's ground set has n={objective.n} items but `blocks` use index "
                f"{self.min_ground_size - 1}"
            )

    def sample(self, weights: NDArray[np.float64], rng: np.random.Generator) -> list[int]:
        """One action per agent, action ``k`` of agent ``i`` with probability ∝ ``weights[i, k]``.

        Rows that sum to zero (for instance MA-OSMA's all-zero start) are sampled uniformly. Renormalising a
        row with ``Σ x < 1`` instead of leaving the residual mass to "no action" can only raise the expected
        utility of a monotone objective, so ``E[f(S)] >= F(x)`` still holds.

        Args:
            weights: shape ``(N, K)``, non-negative; padded entries are ignored.
            rng: the generator to draw from (one uniform per agent).
        """
        probs = np.where(self.valid, np.maximum(weights, 0.0), 0.0)
        totals = probs.sum(axis=1, keepdims=True)
        probs = np.where(
            totals > 0, probs / np.where(totals > 0, totals, 1.0), self.valid / self.sizes[:, None]
        )
        cumulative = np.cumsum(probs, axis=1)
        draws = rng.random(self.n_agents)[:, None]
        # Clamp to the last real entry so that rounding in the cumulative sum never picks a pad.
        chosen = np.minimum((cumulative <= draws).sum(axis=1), self.sizes - 1)
        return list(self.padded[np.arange(self.n_agents), chosen].tolist())
