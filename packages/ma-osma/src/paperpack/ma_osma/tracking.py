"""The multi-target tracking simulation of the paper's experiments (our reconstruction of its details).

``N`` agents and ``M`` targets move in the square ``[0, L]^2``. Every agent has the same ``A = 9`` moves
(the 8 compass directions at ``agent_speed`` and "stay"); the moves are relabelled per agent so that the
action sets are disjoint: action ``a`` of agent ``i`` is the ground-set index ``i·A + a``
(:attr:`TrackingEnv.blocks`).

A round (:meth:`TrackingEnv.step`): the agents commit to actions; the targets move; the utility
``f_t(S) = Σ_k max_{a∈S} 1 / (offset + ‖destination(a) - q_k‖)`` is revealed
(:class:`~paperpack.ma_osma.objectives.TrackingObjective`); the agents move. Target motions (all reflected at
the walls, every random draw taken every round so that one seed gives the same non-reactive trajectories
whatever the agents do):

- ``"polyline"``: straight at ``target_speed``, a fresh random heading every ``turn_every`` rounds;
- ``"random"``: a Gaussian random walk with standard deviation ``noise`` per coordinate and round;
- ``"adversarial"``: a polyline target that flees straight away from the nearest agent at ``flee_speed``
  whenever that agent is within ``flee_radius`` (evasive);
- ``"mixed"``: the three kinds in the proportions ``motion_mix`` (random : adversarial : polyline).

Agents and targets start uniformly at random in the square. The paper's testbed is 20 agents, 30 targets and
1250 rounds with mixes 8:1:1, 6:3:1 and 4:5:1; the sensing radius, speeds and arena size are not given there,
so every such default here is ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_literal, check_positive
from paperpack.ma_osma.objectives import TrackingObjective, selection_mask

__all__ = ["Motion", "TrackingEnv", "TrackingStep"]

Motion = Literal["random", "adversarial", "polyline", "mixed"]
_KINDS = ("random", "adversarial", "polyline")
_DIAGONAL = 1.0 / math.sqrt(2.0)
MOVES = np.array(
    [
        [0.0, 0.0],
        [1.0, 0.0],
        [_DIAGONAL, _DIAGONAL],
        [0.0, 1.0],
        [-_DIAGONAL, _DIAGONAL],
        [-1.0, 0.0],
        [-_DIAGONAL, -_DIAGONAL],
        [0.0, -1.0],
        [_DIAGONAL, -_DIAGONAL],
    ]
)


@dataclass(frozen=True)
class TrackingStep:
    """What one round reveals.

    Attributes:
        objective: ``f_t``, to pass to the algorithms' ``update``.
        utility: ``f_t(S_t)`` of the actions taken.
        covered: targets within ``cover_radius`` of some agent after the move.
    """

    objective: TrackingObjective
    utility: float
    covered: int


class TrackingEnv:
    """Multi-target tracking with ``n_agents`` agents and ``n_targets`` targets.

    Args:
        n_agents: ``N``.
        n_targets: ``M``.
        motion: ``"random"``, ``"adversarial"``, ``"polyline"`` or ``"mixed"``.
        motion_mix: proportions (random, adversarial, polyline) for ``"mixed"``.
        arena: side ``L`` of the square.
        agent_speed: length of an agent's move per round.
        target_speed: speed of polyline and adversarial targets.
        noise: standard deviation of the random walk per coordinate.
        turn_every: rounds between heading changes of polyline targets.
        flee_radius: distance at which adversarial targets flee.
        flee_speed: their speed while fleeing.
        cover_radius: a target within this distance of an agent counts as covered.
        offset: the constant in the utility ``1 / (offset + distance)``.

    Examples:
        >>> env = TrackingEnv(3, 4)
        >>> env.reset(seed=0)
        >>> step = env.step([0, 9, 18])
        >>> step.objective.n, len(env.blocks), 0 <= step.covered <= 4
        (27, 3, True)
    """

    def __init__(
        self,
        n_agents: int,
        n_targets: int,
        motion: Motion = "mixed",
        *,
        motion_mix: Sequence[float] = (1.0, 1.0, 1.0),
        arena: float = 50.0,
        agent_speed: float = 1.0,
        target_speed: float = 0.8,
        noise: float = 0.5,
        turn_every: int = 50,
        flee_radius: float = 5.0,
        flee_speed: float = 1.2,
        cover_radius: float = 5.0,
        offset: float = 1.0,
    ) -> None:
        check_int("n_agents", n_agents, minimum=1)
        check_int("n_targets", n_targets, minimum=1)
        check_literal("motion", motion, Motion)
        for name, value in (
            ("arena", arena),
            ("agent_speed", agent_speed),
            ("target_speed", target_speed),
            ("flee_radius", flee_radius),
            ("flee_speed", flee_speed),
            ("cover_radius", cover_radius),
            ("offset", offset),
        ):
            check_positive(name, value)
        check_positive("noise", noise, allow_zero=True)
        check_int("turn_every", turn_every, minimum=1)
        mix = np.asarray(motion_mix, dtype=np.float64)
        if mix.shape != (3,) or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
            raise ConfigError(
                "`motion_mix` must be three non-negative proportions (random, adversarial, polyline), "
                f"got {motion_mix!r}"
            )
        self.n_agents = n_agents
        self.n_targets = n_targets
        self.motion = motion
        self.arena = float(arena)
        self.agent_speed = float(agent_speed)
        self.target_speed = float(target_speed)
        self.noise = float(noise)
        self.turn_every = turn_every
        self.flee_radius = float(flee_radius)
        self.flee_speed = float(flee_speed)
        self.cover_radius = float(cover_radius)
        self.offset = float(offset)
        self.moves: NDArray[np.float64] = MOVES.copy()
        self.kinds: tuple[str, ...] = _assign_kinds(n_targets, motion, mix)
        n_actions = len(self.moves)
        self.blocks: list[list[int]] = [
            list(range(i * n_actions, (i + 1) * n_actions)) for i in range(n_agents)
        ]
        self.rounds = 0
        self._rng: np.random.Generator | None = None
        self.agent_positions: NDArray[np.float64] = np.zeros((n_agents, 2))
        self.target_positions: NDArray[np.float64] = np.zeros((n_targets, 2))
        self._headings = np.zeros((n_targets, 2))

    @property
    def n_ground(self) -> int:
        """Size of the ground set, ``N·A``."""
        return self.n_agents * len(self.moves)

    def reset(self, seed: int) -> None:
        """Place agents and targets uniformly at random and draw the targets' headings (seeded)."""
        check_int("seed", seed, minimum=0)
        self._rng = np.random.default_rng(seed)
        self.agent_positions = self._rng.uniform(0.0, self.arena, (self.n_agents, 2))
        self.target_positions = self._rng.uniform(0.0, self.arena, (self.n_targets, 2))
        self._headings = _unit_vectors(self._rng.uniform(0.0, 2.0 * math.pi, self.n_targets))
        self.rounds = 0

    def step(self, actions: Sequence[int] | ArrayLike) -> TrackingStep:
        """Play one round with one ground-set index per agent (as returned by an algorithm's ``act``).

        Raises:
            ConfigError: before :meth:`reset`, or when ``actions`` is not one action of each agent's block.
        """
        if self._rng is None:
            raise ConfigError("call `TrackingEnv.reset(seed)` before `step`")
        chosen = np.asarray(actions)
        selection_mask(chosen, self.n_ground, name="actions")
        owners = chosen // len(self.moves) if chosen.ndim == 1 else None
        if (
            owners is None
            or chosen.shape != (self.n_agents,)
            or not np.array_equal(owners, np.arange(self.n_agents))
        ):
            raise ConfigError(
                "`actions` must hold one action per agent in agent order (agent i picks from blocks[i]), "
                f"got {chosen.tolist()}"
            )
        self._move_targets(self._rng)
        objective = TrackingObjective(
            self.agent_positions, self.moves, self.target_positions, step=self.agent_speed, offset=self.offset
        )
        utility = objective.value(chosen)
        destinations = objective.destinations[chosen]
        self.agent_positions = np.clip(destinations, 0.0, self.arena)
        distance = np.linalg.norm(
            self.agent_positions[:, None, :] - self.target_positions[None, :, :], axis=2
        )
        covered = int((distance.min(axis=0) <= self.cover_radius).sum())
        self.rounds += 1
        return TrackingStep(objective=objective, utility=utility, covered=covered)

    def _move_targets(self, rng: np.random.Generator) -> None:
        noise = rng.normal(0.0, self.noise, (self.n_targets, 2))
        turns = _unit_vectors(rng.uniform(0.0, 2.0 * math.pi, self.n_targets))
        if self.rounds > 0 and self.rounds % self.turn_every == 0:
            self._headings = turns
        kinds = np.array(self.kinds)
        velocity = np.where((kinds == "random")[:, None], noise, self.target_speed * self._headings)
        adversarial = kinds == "adversarial"
        if adversarial.any():
            away = self.target_positions[:, None, :] - self.agent_positions[None, :, :]
            distance = np.linalg.norm(away, axis=2)
            nearest = distance.argmin(axis=1)
            gap = distance[np.arange(self.n_targets), nearest]
            fleeing = adversarial & (gap <= self.flee_radius)
            direction = away[np.arange(self.n_targets), nearest] / np.maximum(gap, 1e-12)[:, None]
            velocity = np.where(fleeing[:, None], self.flee_speed * direction, velocity)
            self._headings = np.where(fleeing[:, None], direction, self._headings)
        position = self.target_positions + velocity
        # Reflect at the walls: mirror the position and turn the heading around on that axis.
        low, high = position < 0.0, position > self.arena
        position = np.where(low, -position, np.where(high, 2.0 * self.arena - position, position))
        self._headings = np.where(low | high, -self._headings, self._headings)
        self.target_positions = np.clip(position, 0.0, self.arena)


def _unit_vectors(angles: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _assign_kinds(n_targets: int, motion: str, mix: NDArray[np.float64]) -> tuple[str, ...]:
    """Target kinds in index order; for "mixed", counts by largest remainder of ``n_targets · mix``."""
    if motion != "mixed":
        return (motion,) * n_targets
    share = n_targets * mix / mix.sum()
    counts = np.floor(share).astype(int)
    for index in np.argsort(-(share - counts), kind="stable")[: n_targets - counts.sum()]:
        counts[index] += 1
    return tuple(kind for kind, count in zip(_KINDS, counts, strict=True) for _ in range(count))
