"""OSG, Online Sequential Greedy (Xu, Zhou & Tzoumas, RA-L 2023), the paper's baseline.

Re-implemented from a reading of its public simulation code (UM-iRaL/ral23-online-submodular-coordination,
``agent.py`` and ``main_OSG.py``, which carry no licence; nothing is copied). Each agent runs FSF*, an expert
algorithm that tracks a shifting best action, over its own actions ``V_i`` with ``K_i = |V_i|``:

- ``J = ⌈log2 T⌉`` experts (at least 1), expert learning rates ``γ_j = sqrt(ln(K_i T) / 2^{j-1})``,
  meta rate ``g = sqrt(ln J / T)``, share rate ``β = 1 / T``; expert weights ``q ∈ Δ_J`` and per-expert action
  weights ``w_j ∈ Δ_{K_i}`` start uniform.
- act: every agent draws ``a_i ∼ Σ_j q_j w_j``.
- update, sequentially in agent order: with ``A_{i-1}`` the executed actions of agents ``1..i-1``,
  ``loss(a) = -[f(A_{i-1} ∪ {a}) - f(A_{i-1})] / max_{a'∈V_i} f({a'})`` for every ``a ∈ V_i`` (full
  information);
  ``v = w_j ⊙ e^{-γ_j loss}``, ``w_j ← normalise(β Σv / K_i + (1 - β) v)``;
  ``q_j ← normalise(q_j e^{-g ⟨loss, w_j⟩ / ‖w_j‖_1})`` (with the old ``w_j``).

The public code sees every predecessor (a complete communication graph). With ``graph=``, agent ``i`` only
sees the predecessors that are its neighbours, the restriction the paper compares against on sparse graphs. As
all agents' losses depend only on already executed actions, one batched oracle call serves the whole sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int
from paperpack.ma_osma.consensus import adjacency_matrix
from paperpack.ma_osma.objectives import SubmodularObjective
from paperpack.ma_osma.partition import Partition

__all__ = ["OSG"]


class OSG:
    """Online Sequential Greedy with FSF* experts per agent.

    Args:
        blocks: agent ``i``'s actions ``V_i``; the sequence order is the agent order.
        horizon: ``T``, which sets the experts' rates (the algorithm keeps running past it).
        graph: ``None`` for the complete information of the public code; otherwise a ``networkx.Graph`` or
            adjacency array over the agents, and agent ``i`` sees predecessor ``j`` only when they are
            neighbours.
        seed: seed of the agents' sampling.

    Examples:
        >>> import numpy as np
        >>> from paperpack.ma_osma import FacilityLocation
        >>> f = FacilityLocation(np.random.default_rng(0).random((4, 3)))
        >>> osg = OSG([[0, 1], [2, 3]], horizon=10, seed=0)
        >>> for _ in range(10):
        ...     actions = osg.act()
        ...     osg.update(f)
        >>> len(actions)
        2
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        *,
        horizon: int,
        graph: nx.Graph | ArrayLike | None = None,
        seed: int = 0,
    ) -> None:
        self.partition = Partition(blocks)
        check_int("horizon", horizon, minimum=1)
        check_int("seed", seed, minimum=0)
        n_agents = self.partition.n_agents
        predecessors = np.tri(n_agents, k=-1, dtype=bool)
        if graph is not None:
            adjacency = adjacency_matrix(graph)
            if adjacency.shape[0] != n_agents:
                raise ConfigError(
                    f"`graph` must have {n_agents} nodes (one per block), got {adjacency.shape[0]}"
                )
            predecessors &= adjacency
        self.visible: NDArray[np.bool_] = predecessors
        self.horizon = horizon
        n_experts = max(1, math.ceil(math.log2(horizon)))
        self.meta_rate = math.sqrt(math.log(n_experts) / horizon)
        self.share_rate = 1.0 / horizon
        sizes = self.partition.sizes.astype(np.float64)
        levels = 2.0 ** np.arange(n_experts)
        self.expert_rates: NDArray[np.float64] = np.sqrt(np.log(sizes * horizon)[:, None] / levels[None, :])
        self.expert_weights: NDArray[np.float64] = np.full((n_agents, n_experts), 1.0 / n_experts)
        uniform = self.partition.valid / sizes[:, None]
        self.action_weights: NDArray[np.float64] = np.repeat(uniform[:, None, :], n_experts, axis=1)
        self.rounds = 0
        self._rng = np.random.default_rng(seed)
        self._last: list[int] | None = None

    def act(self) -> list[int]:
        """Each agent draws from its FSF* mixture ``Σ_j q_j w_j``; one ground-set index per agent."""
        mixture = np.einsum("nj,njk->nk", self.expert_weights, self.action_weights)
        self._last = self.partition.sample(mixture, self._rng)
        return list(self._last)

    def update(self, objective: SubmodularObjective) -> None:
        """Score every action against the visible predecessors' executed actions and update FSF*.

        Raises:
            ConfigError: when called before :meth:`act` (OSG needs the executed actions).
        """
        if self._last is None:
            raise ConfigError("`OSG.update` needs the actions of the round: call `act()` before `update()`")
        self.partition.check_objective(objective)
        n_agents = self.partition.n_agents
        executed = np.zeros((n_agents, objective.n), dtype=bool)
        executed[np.arange(n_agents), self._last] = True
        predecessors = (self.visible.astype(np.float64) @ executed.astype(np.float64)) > 0  # A_{i-1} per row
        candidates = self.partition.padded
        gains = objective.marginal_gains(predecessors, candidates)
        singletons = objective.marginal_gains(np.zeros_like(predecessors), candidates)
        scale = np.where(self.partition.valid, singletons, -np.inf).max(axis=1, keepdims=True)
        # With every singleton worth 0, submodularity makes every gain 0: the loss is 0, not 0/0.
        loss = np.where(self.partition.valid, -gains / np.where(scale > 0, scale, 1.0), 0.0)
        self._update_experts(loss)
        self._last = None
        self.rounds += 1

    def _update_experts(self, loss: NDArray[np.float64]) -> None:
        valid = self.partition.valid[:, None, :]
        old = self.action_weights
        v = np.where(valid, old * np.exp(-self.expert_rates[:, :, None] * loss[:, None, :]), 0.0)
        shared = self.share_rate * v.sum(axis=2, keepdims=True) / self.partition.sizes[:, None, None]
        new = np.where(valid, shared + (1.0 - self.share_rate) * v, 0.0)
        self.action_weights = new / new.sum(axis=2, keepdims=True)
        expert_loss = (loss[:, None, :] * old).sum(axis=2) / old.sum(axis=2)
        q = self.expert_weights * np.exp(-self.meta_rate * expert_loss)
        self.expert_weights = q / q.sum(axis=1, keepdims=True)

    def state_dict(self) -> dict[str, Any]:
        """The state to resume from: FSF* weights, the round count and the generator state."""
        return {
            "expert_weights": self.expert_weights.copy(),
            "action_weights": self.action_weights.copy(),
            "rounds": self.rounds,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ConfigError: when the weights do not match this instance's shapes.
        """
        for key in ("expert_weights", "action_weights"):
            value = np.asarray(state[key], dtype=np.float64)
            if value.shape != getattr(self, key).shape:
                raise ConfigError(
                    f"`state[{key!r}]` must have shape {getattr(self, key).shape}, got {value.shape}"
                )
            setattr(self, key, value.copy())
        self.rounds = int(state["rounds"])
        self._rng.bit_generator.state = state["rng"]
