"""MA-OSMA (Algorithm 1) and MA-OSEA (Algorithm 2), vectorized over agents.

Agent ``i`` keeps ``x_i ∈ [0, 1]^n``, its copy of everybody's fractional decision. Each round ``t``:

1. act: agent ``i`` draws one action of ``V_i`` with probability ∝ ``x_i[V_i]`` (independent per-block
   rounding, lossless in expectation for monotone submodular ``f``);
2. ``f_t`` is revealed; agent ``i`` estimates ``g_i``, its block of ``∇F_t^s(x_i)``, with ``2|V_i|`` oracle
   calls (:func:`~paperpack.ma_osma.gradient.boosted_gradient`);
3. consensus: ``y_i = Σ_j w_ij x_j`` (one exchange of ``n`` floats per edge);
4. step on the own block only, the other blocks keep ``y_i``:

   - MA-OSMA: ``x_i[V_i] ← Proj_{x≥0, Σx≤1}(y_i[V_i] + η g_i)``;
   - MA-OSEA: ``q ∝ y_i[V_i] ⊙ exp(η g_i)``, ``x_i[V_i] ← (1 - γ) q + γ / |V_i|`` (KL step, then mixing with
     the uniform distribution, so no projection is needed).

The order "gradient at ``x_i``, then consensus, then step" is our reading of the algorithms (the paper note
marks it as reconstructed). With ``W = 11ᵀ/N`` each agent's step is averaged into the others' copies, so the
common decision moves by about ``η / N`` per round while the acting agent's own copy moves by ``η``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_choice, check_int, check_positive, check_range
from paperpack.ma_osma.consensus import mixing_modulus
from paperpack.ma_osma.gradient import Z_SAMPLINGS, boosted_gradient
from paperpack.ma_osma.objectives import SubmodularObjective
from paperpack.ma_osma.partition import Partition
from paperpack.ma_osma.projection import project_solid_simplex

__all__ = ["MAOSEA", "MAOSMA", "STARTS", "NoMixingWarning", "check_consensus_matrix"]

STARTS = ("own", "uniform")
# β at or above this counts as "W does not mix" (eigenvalues of a symmetric W are exact to about 1e-15).
NO_MIXING_BETA = 1.0 - 1e-9


class NoMixingWarning(UserWarning):
    """The consensus matrix does not mix (``β = 1``): the agents' copies never reach agreement."""


def check_consensus_matrix(W: ArrayLike, n_agents: int, *, atol: float = 1e-8) -> NDArray[np.float64]:
    """Return ``W`` as floats after checking it is ``N x N``, non-negative, symmetric and doubly stochastic.

    Raises:
        ConfigError: naming the first property that fails.
    """
    matrix = np.array(W, dtype=np.float64)
    if matrix.shape != (n_agents, n_agents):
        raise ConfigError(
            f"`W` must have shape ({n_agents}, {n_agents}) (one row per agent), got {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)) or np.any(matrix < -atol):
        raise ConfigError("`W` must have finite non-negative entries")
    if not np.allclose(matrix, matrix.T, atol=atol, rtol=0.0):
        raise ConfigError("`W` must be symmetric; build it with `consensus_matrix(graph)`")
    row_sums = matrix.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=atol, rtol=0.0):
        raise ConfigError(
            f"`W` must be doubly stochastic (rows sum to 1), got row sums in [{row_sums.min():g}, "
            f"{row_sums.max():g}]"
        )
    return matrix


class _ConsensusLearner(ABC):
    """Steps 1-3 shared by MA-OSMA and MA-OSEA; subclasses define the initial state and the block step."""

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        W: ArrayLike,
        *,
        eta: float,
        curvature: float,
        n_samples: int,
        z_sampling: str,
        seed: int,
    ) -> None:
        self.partition = Partition(blocks)
        self.W = check_consensus_matrix(W, self.partition.n_agents)
        self.beta = mixing_modulus(self.W)
        if self.beta >= NO_MIXING_BETA:
            warnings.warn(
                f"`W` does not mix: β = max(|λ_2|, |λ_N|) = {self.beta:.6g} (W = I means no communication; "
                "a disconnected or periodic W never reaches consensus), so the regret bound's 1/(1 - β) is "
                "infinite and each agent learns from its own copy only; build W with "
                "`consensus_matrix(graph)` on a connected graph",
                NoMixingWarning,
                stacklevel=3,
            )
        # Sparse graphs mix through their edges only (O(edges · n) instead of O(N² · n) per round).
        density = np.count_nonzero(self.W) / self.W.size
        self._mixing: NDArray[np.float64] | sparse.csr_array = (
            sparse.csr_array(self.W) if density < 0.25 else self.W
        )
        check_positive("eta", eta)
        check_range("curvature", curvature, 0.0, 1.0, low_inclusive=False)
        check_int("n_samples", n_samples, minimum=1)
        check_choice("z_sampling", z_sampling, Z_SAMPLINGS)
        check_int("seed", seed, minimum=0)
        self.eta = float(eta)
        self.curvature = float(curvature)
        self.n_samples = n_samples
        self.z_sampling = z_sampling
        self.rounds = 0
        self._rng = np.random.default_rng(seed)
        self._rows = np.arange(self.partition.n_agents)[:, None]
        self._X = self._initial_decisions()

    @property
    def decisions(self) -> NDArray[np.float64]:
        """A copy of ``X`` (shape ``(N, n)``): row ``i`` is agent ``i``'s copy of the fractional decision."""
        return self._X.copy()

    def act(self) -> list[int]:
        """One ground-set index per agent (in agent order), drawn from the agent's own block of ``x_i``."""
        own = self._X[self._rows, self.partition.padded]
        return self.partition.sample(own, self._rng)

    def update(self, objective: SubmodularObjective) -> None:
        """Observe ``f_t``: estimate the boosted gradient, average with neighbours, step on the own block.

        Raises:
            FloatingPointError: when the step would give a non-finite decision (the decisions stay as they
                were): never silently NaN.
        """
        self.partition.check_objective(objective)
        gradient = boosted_gradient(
            objective,
            self._X,
            self.partition,
            curvature=self.curvature,
            n_samples=self.n_samples,
            z_sampling=self.z_sampling,
            rng=self._rng,
        )
        mixed = np.asarray(self._mixing @ self._X)
        own = mixed[self._rows, self.partition.padded]
        stepped = self._block_step(own, gradient)
        valid = self.partition.valid
        if not np.all(np.isfinite(stepped[valid])):
            agents = sorted({int(i) for i in np.nonzero(~np.isfinite(stepped) & valid)[0]})
            raise FloatingPointError(
                f"{type(self).__name__}'s step gave a non-finite decision for agent(s) {agents} in round "
                f"{self.rounds + 1} (eta={self.eta:g}); the decisions are left as they were"
            )
        mixed[np.broadcast_to(self._rows, valid.shape)[valid], self.partition.padded[valid]] = stepped[valid]
        self._X = mixed
        self.rounds += 1

    def state_dict(self) -> dict[str, Any]:
        """The state to resume from: ``X``, the round count and the generator state."""
        return {"decisions": self._X.copy(), "rounds": self.rounds, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ConfigError: when the decisions do not match this learner's shape.
        """
        decisions = np.asarray(state["decisions"], dtype=np.float64)
        if decisions.shape != self._X.shape:
            raise ConfigError(f"`state['decisions']` must have shape {self._X.shape}, got {decisions.shape}")
        self._X = decisions.copy()
        self.rounds = int(state["rounds"])
        self._rng.bit_generator.state = state["rng"]

    @abstractmethod
    def _initial_decisions(self) -> NDArray[np.float64]:
        """``X`` at round 0."""

    @abstractmethod
    def _block_step(self, own: NDArray[np.float64], gradient: NDArray[np.float64]) -> NDArray[np.float64]:
        """New own-block values from the mixed ones ``y_i[V_i]`` and ``g_i`` (both padded ``(N, K)``)."""


class MAOSMA(_ConsensusLearner):
    """Multi-Agent Online Surrogate Mirror Ascent with a Euclidean step (the paper's Algorithm 1).

    Args:
        blocks: agent ``i``'s actions ``V_i`` (disjoint lists of ground-set indices).
        W: symmetric doubly stochastic ``N x N`` consensus matrix (:func:`consensus_matrix`).
        eta: step size ``η`` (constant, Remark 8); no default in the paper.
        curvature: ``c ∈ (0, 1]`` of the surrogate weight ``e^{c(z-1)}``; ``1`` is always safe and gives
            ``1 - 1/e``.
        n_samples: gradient estimates averaged per round (the paper: 1).
        z_sampling: ``"importance"`` (ours, default), ``"uniform"`` or ``"none"`` (plain-gradient ablation).
        seed: seed of the agents' randomness.

    Starts from ``x_i = 0`` for every agent (ours), so the first round's actions are uniform.

    Warns:
        NoMixingWarning: when ``W`` does not mix (``β = 1``, e.g. ``W = I``).

    Examples:
        >>> import numpy as np
        >>> from paperpack.ma_osma import FacilityLocation, consensus_matrix
        >>> import networkx as nx
        >>> f = FacilityLocation(np.random.default_rng(0).random((6, 4)))
        >>> W, beta = consensus_matrix(nx.path_graph(3))
        >>> learner = MAOSMA([[0, 1], [2, 3], [4, 5]], W, eta=0.5, seed=0)
        >>> for _ in range(20):
        ...     actions = learner.act()
        ...     learner.update(f)
        >>> len(learner.act())
        3
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        W: ArrayLike,
        *,
        eta: float,
        curvature: float = 1.0,
        n_samples: int = 1,
        z_sampling: str = "importance",
        seed: int = 0,
    ) -> None:
        super().__init__(
            blocks, W, eta=eta, curvature=curvature, n_samples=n_samples, z_sampling=z_sampling, seed=seed
        )

    def _initial_decisions(self) -> NDArray[np.float64]:
        return np.zeros((self.partition.n_agents, self.partition.min_ground_size))

    def _block_step(self, own: NDArray[np.float64], gradient: NDArray[np.float64]) -> NDArray[np.float64]:
        """``Proj_{x≥0, Σx≤1}(y_i[V_i] + η g_i)``."""
        return project_solid_simplex(own + self.eta * gradient, self.partition.valid)


class MAOSEA(_ConsensusLearner):
    """Multi-Agent Online Surrogate Entropic Ascent: KL step mixed with the uniform (the paper's Algorithm 2).

    Args:
        blocks: agent ``i``'s actions ``V_i``.
        W: symmetric doubly stochastic consensus matrix.
        eta: step size ``η``.
        mix: ``γ ∈ (0, 1]``, the weight of the uniform distribution mixed in after each step (keeps every
            probability ``≥ γ / |V_i|``); the default 0.01 is ours.
        curvature: ``c ∈ (0, 1]``.
        n_samples: gradient estimates averaged per round.
        z_sampling: ``"importance"``, ``"uniform"`` or ``"none"``.
        seed: seed of the agents' randomness.
        start: the copies at round 0. ``"own"`` (default, the paper note's initialisation): agent ``i``'s copy
            is uniform on its own block, ``x_i[V_i] = 1 / |V_i|``, and 0 elsewhere, so the other blocks fill
            in through the consensus as MA-OSMA's do; it needs every ``w_ii > 0`` (with ``w_ii = 0`` agent
            ``i``'s mixed own block starts with no mass). ``"uniform"``: every copy is uniform on every block.

    Raises:
        ConfigError: for a bad argument, or ``start="own"`` with a zero on the diagonal of ``W``.

    Warns:
        NoMixingWarning: when ``W`` does not mix (``β = 1``, e.g. ``W = I``).

    Examples:
        >>> import numpy as np
        >>> from paperpack.ma_osma import WeightedCoverage
        >>> f = WeightedCoverage(np.eye(4, dtype=bool))
        >>> learner = MAOSEA([[0, 1], [2, 3]], np.full((2, 2), 0.5), eta=1.0, seed=0)
        >>> learner.decisions.tolist()
        [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
        >>> learner.update(f)
        >>> np.round(learner.decisions.sum(axis=1), 9).tolist()  # own block: mass 1; the other: half of it
        [1.5, 1.5]
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        W: ArrayLike,
        *,
        eta: float,
        mix: float = 0.01,
        curvature: float = 1.0,
        n_samples: int = 1,
        z_sampling: str = "importance",
        seed: int = 0,
        start: str = "own",
    ) -> None:
        check_range("mix", mix, 0.0, 1.0, low_inclusive=False)
        check_choice("start", start, STARTS)
        self.mix = float(mix)
        self.start = start
        super().__init__(
            blocks, W, eta=eta, curvature=curvature, n_samples=n_samples, z_sampling=z_sampling, seed=seed
        )
        silent = np.nonzero(np.diag(self.W) <= 0.0)[0]
        if start == "own" and silent.size:
            raise ConfigError(
                f"MAOSEA(start='own') needs every w_ii > 0, but `W` has w_ii = 0 for agent(s) "
                f"{silent.tolist()}: such an agent's mixed copy of its own block starts with no mass (the "
                "others' copies of it are 0), and the entropic step q ∝ y_i[V_i] ⊙ e^(η g_i) has nothing to "
                "normalise. Use start='uniform', or a W with a positive diagonal (`consensus_matrix(graph)` "
                "gives one)"
            )

    def _initial_decisions(self) -> NDArray[np.float64]:
        decisions = np.zeros((self.partition.n_agents, self.partition.min_ground_size))
        for i, block in enumerate(self.partition.blocks):
            agents = i if self.start == "own" else slice(None)
            decisions[agents, list(block)] = 1.0 / len(block)
        return decisions

    def _block_step(self, own: NDArray[np.float64], gradient: NDArray[np.float64]) -> NDArray[np.float64]:
        """``q ∝ y_i[V_i] ⊙ e^{η g_i}``, then ``(1 - γ) q + γ / |V_i|``."""
        valid = self.partition.valid
        exponent = np.where(valid, self.eta * gradient, -np.inf)
        exponent -= exponent.max(axis=1, keepdims=True)
        q = np.where(valid, own * np.exp(exponent), 0.0)
        # A block with no mass has no distribution to tilt: its total is left at 0, so the check in `update`
        # names the agent instead of letting 0/0 spread NaN.
        total = q.sum(axis=1, keepdims=True)
        q = np.divide(q, total, out=np.full_like(q, np.nan), where=total > 0)
        return np.where(valid, (1.0 - self.mix) * q + self.mix / self.partition.sizes[:, None], 0.0)
