"""Slow, literal implementations that the tests compare the vectorized code against.

Nothing here is fast or meant for use: every function loops over sets, agents and actions exactly as the
equations read, so that a mistake in the vectorized code cannot be repeated here by construction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

SetFunction = Callable[[frozenset[int]], float]


def coverage_value(covers: NDArray[np.bool_], weights: Sequence[float], selection: Sequence[int]) -> float:
    """``Σ_e w_e 1[∃ v ∈ S: covers[v, e]]`` by loops."""
    total = 0.0
    for element, weight in enumerate(weights):
        if any(covers[item, element] for item in set(selection)):
            total += weight
    return total


def facility_value(similarity: NDArray[np.float64], selection: Sequence[int]) -> float:
    """``Σ_j max_{v∈S} s_{vj}`` (0 for the empty set) by loops."""
    members = set(selection)
    return sum(max((similarity[v, j] for v in members), default=0.0) for j in range(similarity.shape[1]))


def multilinear(f: SetFunction, x: Sequence[float]) -> float:
    """``F(x) = Σ_{R⊆[n]} f(R) Π_{v∈R} x_v Π_{v∉R} (1 - x_v)`` by enumerating all ``2^n`` sets."""
    n = len(x)
    total = 0.0
    for bits in itertools.product((0, 1), repeat=n):
        probability = math.prod(x[v] if bit else 1.0 - x[v] for v, bit in enumerate(bits))
        total += probability * f(frozenset(v for v, bit in enumerate(bits) if bit))
    return total


def multilinear_gradient(f: SetFunction, x: Sequence[float]) -> list[float]:
    """``∂F/∂x_v = F(x | x_v = 1) - F(x | x_v = 0)`` by enumeration."""
    gradient = []
    for v in range(len(x)):
        up, down = list(x), list(x)
        up[v], down[v] = 1.0, 0.0
        gradient.append(multilinear(f, up) - multilinear(f, down))
    return gradient


def surrogate_gradient(f: SetFunction, x: Sequence[float], curvature: float, nodes: int = 40) -> list[float]:
    """``∇F^s(x) = ∫_0^1 e^{c(z-1)} ∇F(z·x) dz`` by Gauss-Legendre quadrature over exact gradients."""
    points, weights = np.polynomial.legendre.leggauss(nodes)
    total = np.zeros(len(x))
    for point, weight in zip(points, weights, strict=True):
        z = 0.5 * (point + 1.0)
        total += (
            0.5
            * weight
            * math.exp(curvature * (z - 1.0))
            * np.array(multilinear_gradient(f, [z * v for v in x]))
        )
    return total.tolist()


def project_brute_force(y: Sequence[float]) -> list[float]:
    """Projection onto ``{x ≥ 0, Σx ≤ 1}`` by trying every support and both states of the sum constraint.

    For a support ``S`` the candidate is ``y_S`` (sum inactive) or ``y_S - θ`` with ``Σ = 1`` (active); the
    feasible candidate nearest to ``y`` is the projection (KKT conditions enumerated literally).
    """
    k = len(y)
    best: list[float] = [0.0] * k
    best_distance = sum(v * v for v in y)
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            theta_active = (sum(y[i] for i in support) - 1.0) / size
            for theta in (0.0, theta_active):
                x = [0.0] * k
                for i in support:
                    x[i] = y[i] - theta
                if min(x) < -1e-12 or sum(x) > 1.0 + 1e-12:
                    continue
                distance = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
                if distance < best_distance - 1e-15:
                    best, best_distance = x, distance
    return best


def metropolis_hastings(adjacency: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``w_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``w_ii = 1 - Σ_j w_ij``, by loops."""
    n = adjacency.shape[0]
    degree = [sum(bool(adjacency[i, j]) for j in range(n) if j != i) for i in range(n)]
    W = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and adjacency[i, j]:
                W[i, j] = 1.0 / (1.0 + max(degree[i], degree[j]))
        W[i, i] = 1.0 - sum(W[i, j] for j in range(n) if j != i)
    return W


def greedy(f: SetFunction, blocks: Sequence[Sequence[int]]) -> list[int]:
    """Partition-matroid greedy with value calls only: best (agent, action) gain, ties to the first."""
    chosen: dict[int, int] = {}
    selected: frozenset[int] = frozenset()
    while len(chosen) < len(blocks):
        best_gain, best_pick = -math.inf, (-1, -1)
        for agent, block in enumerate(blocks):
            if agent in chosen:
                continue
            for action in block:
                gain = f(selected | {action}) - f(selected)
                if gain > best_gain:
                    best_gain, best_pick = gain, (agent, action)
        chosen[best_pick[0]] = best_pick[1]
        selected = selected | {best_pick[1]}
    return [chosen[agent] for agent in range(len(blocks))]


def sample_block(probabilities: Sequence[float], block: Sequence[int], u: float) -> int:
    """Inverse-CDF draw of one action; a zero vector means uniform."""
    total = sum(max(p, 0.0) for p in probabilities)
    weights = [max(p, 0.0) / total for p in probabilities] if total > 0 else [1.0 / len(block)] * len(block)
    cumulative = 0.0
    for action, weight in zip(block, weights, strict=True):
        cumulative += weight
        if u < cumulative:
            return action
    return block[-1]


def euclidean_step(y: Sequence[float], g: Sequence[float], eta: float) -> list[float]:
    """MA-OSMA's own-block step, Algorithm 1: ``Proj_{x ≥ 0, Σx ≤ 1}(y + η g)``."""
    return project_brute_force([a + eta * b for a, b in zip(y, g, strict=True)])


def entropic_step(y: Sequence[float], g: Sequence[float], eta: float, mix: float) -> list[float]:
    """MA-OSEA's own-block step, Algorithm 2: ``q ∝ y ⊙ exp(η g)``, then ``(1 - γ) q + γ / |V_i|``."""
    q = [a * math.exp(eta * b) for a, b in zip(y, g, strict=True)]
    return [(1.0 - mix) * value / sum(q) + mix / len(q) for value in q]


def consensus_round(
    f: SetFunction,
    X: NDArray[np.float64],
    W: NDArray[np.float64],
    *,
    blocks: Sequence[Sequence[int]],
    z: NDArray[np.float64],
    weight: NDArray[np.float64],
    uniforms: NDArray[np.float64],
    step: Callable[[list[float], list[float]], list[float]],
) -> NDArray[np.float64]:
    """One MA-OSMA / MA-OSEA update from pre-drawn randomness, agent by agent and action by action.

    Args:
        f: ``f_t``.
        X: current copies, ``(N, n)``.
        W: consensus matrix.
        blocks: the agents' actions.
        z: ``z[i, s]``, the sampled scale of agent ``i``'s sample ``s``.
        weight: the estimator's weight of each sample.
        uniforms: ``uniforms[i, s, v]`` decides ``v ∈ R`` iff ``< z[i, s] · X[i, v]``.
        step: ``(y_i[V_i], g_i) -> new x_i[V_i]``.
    """
    n_agents, n = X.shape
    n_samples = z.shape[1]
    gradients = []
    for i in range(n_agents):
        g = [0.0] * len(blocks[i])
        for s in range(n_samples):
            R = frozenset(v for v in range(n) if uniforms[i, s, v] < z[i, s] * X[i, v])
            for k, action in enumerate(blocks[i]):
                g[k] += weight[i, s] * (f(R | {action}) - f(R - {action})) / n_samples
        gradients.append(g)
    new = np.zeros_like(X)
    for i in range(n_agents):
        for v in range(n):
            new[i, v] = sum(W[i, j] * X[j, v] for j in range(n_agents))
        own = step([new[i, a] for a in blocks[i]], gradients[i])
        for k, action in enumerate(blocks[i]):
            new[i, action] = own[k]
    return new


class ReferenceOSG:
    """OSG with FSF*, one agent at a time, with Python lists, in the order of the public code's loops."""

    def __init__(self, blocks: Sequence[Sequence[int]], horizon: int, visible: NDArray[np.bool_]) -> None:
        self.blocks = [list(b) for b in blocks]
        self.visible = visible
        n_experts = max(1, math.ceil(math.log2(horizon)))
        self.g = math.sqrt(math.log(n_experts) / horizon)
        self.beta = 1.0 / horizon
        self.gamma = [
            [math.sqrt(math.log(len(b) * horizon) / 2 ** (j - 1)) for j in range(1, n_experts + 1)]
            for b in blocks
        ]
        self.q = [[1.0 / n_experts] * n_experts for _ in blocks]
        self.w = [[[1.0 / len(b)] * len(b) for _ in range(n_experts)] for b in blocks]

    def act(self, uniforms: Sequence[float]) -> list[int]:
        actions = []
        for i, block in enumerate(self.blocks):
            mixture = [
                sum(self.q[i][j] * self.w[i][j][k] for j in range(len(self.q[i]))) for k in range(len(block))
            ]
            actions.append(sample_block(mixture, block, uniforms[i]))
        return actions

    def update(self, f: SetFunction, actions: Sequence[int]) -> None:
        for i, block in enumerate(self.blocks):
            A = frozenset(actions[j] for j in range(i) if self.visible[i, j])
            scale = max(f(frozenset({a})) for a in block)
            loss = [-(f(A | {a}) - f(A)) / scale if scale > 0 else 0.0 for a in block]
            for j in range(len(self.q[i])):
                old = list(self.w[i][j])
                v = [old[k] * math.exp(-self.gamma[i][j] * loss[k]) for k in range(len(block))]
                shared = [self.beta * sum(v) / len(block) + (1 - self.beta) * v[k] for k in range(len(block))]
                self.w[i][j] = [s / sum(shared) for s in shared]
                expert_loss = sum(loss[k] * old[k] for k in range(len(block))) / sum(old)
                self.q[i][j] *= math.exp(-self.g * expert_loss)
            total = sum(self.q[i])
            self.q[i] = [value / total for value in self.q[i]]
