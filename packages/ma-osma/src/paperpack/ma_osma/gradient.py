"""The boosted (surrogate) gradient of the multilinear extension and its one-sample estimator.

Multilinear extension: ``F(x) = E_{R∼x} f(R)`` where ``R`` holds each item ``v`` independently with
probability ``x_v``; ``∂F/∂x_v = E[f(R ∪ {v}) - f(R ∖ {v})]``.

Surrogate ("boosting") function with curvature ``c ∈ (0, 1]``:

    ``F^s(x) = ∫_0^1 (e^{c(z-1)} / z) F(z·x) dz``,   ``∇F^s(x) = ∫_0^1 e^{c(z-1)} ∇F(z·x) dz``.

Stationary points of ``F^s`` are ``(1 - e^{-c}) / c``-approximate for ``F`` (the paper's Theorem 2), where
those of ``F`` itself only give ``1 / (1 + c)``. Writing ``e^{c(z-1)} = ((1 - e^{-c}) / c) · p_c(z)`` with the
density ``p_c(z) = c e^{c(z-1)} / (1 - e^{-c})`` on ``[0, 1]`` gives the unbiased estimator we use by default
(``z_sampling="importance"``, our reconstruction of Alg. 1 lines 9-11):

    ``z ∼ p_c``,  ``R ∼ z·x``,  ``ĝ_v = ((1 - e^{-c}) / c) · [f(R ∪ {v}) - f(R ∖ {v})]``,

two oracle calls per action ``v`` of the agent's block. ``z_sampling="uniform"`` draws ``z ∼ U[0, 1]`` and
weights by ``e^{c(z-1)}`` (same mean, more variance); ``"none"`` is the ablation ``z = 1`` (plain ``∇F(x)``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from paperpack.ma_osma.objectives import SubmodularObjective
from paperpack.ma_osma.partition import Partition

__all__ = ["Z_SAMPLINGS", "boosted_gradient", "sample_z", "surrogate_scale", "z_density"]

Z_SAMPLINGS = ("importance", "uniform", "none")


def surrogate_scale(curvature: float) -> float:
    """``∫_0^1 e^{c(z-1)} dz = (1 - e^{-c}) / c``, the approximation ratio the surrogate attains."""
    return -math.expm1(-curvature) / curvature


def z_density(z: NDArray[np.float64], curvature: float) -> NDArray[np.float64]:
    """The density ``p_c(z) = c e^{c(z-1)} / (1 - e^{-c})`` on ``[0, 1]`` (0 outside)."""
    z = np.asarray(z, dtype=np.float64)
    inside = (z >= 0) & (z <= 1)
    return np.where(inside, np.exp(curvature * (z - 1.0)) / surrogate_scale(curvature), 0.0)


def sample_z(rng: np.random.Generator, size: int | tuple[int, ...], curvature: float) -> NDArray[np.float64]:
    """Draw ``z ∼ p_c`` by inverting its CDF ``P(z ≤ b) = (e^{c(b-1)} - e^{-c}) / (1 - e^{-c})``.

    ``z = 1 + ln(e^{-c} + u (1 - e^{-c})) / c`` with ``u ∼ U[0, 1)``.

    Examples:
        >>> import numpy as np
        >>> z = sample_z(np.random.default_rng(0), 10_000, 1.0)
        >>> bool(0.0 <= z.min() and z.max() <= 1.0), round(float(z.mean()), 1)
        (True, 0.6)
    """
    u = rng.random(size)
    floor = math.exp(-curvature)
    return np.asarray(1.0 + np.log(floor + u * (1.0 - floor)) / curvature, dtype=np.float64)


def boosted_gradient(
    objective: SubmodularObjective,
    decisions: NDArray[np.float64],
    partition: Partition,
    *,
    curvature: float,
    n_samples: int,
    z_sampling: str,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Estimate each agent's own block of ``∇F^s`` at its own copy ``x_i`` (one batched oracle call).

    Args:
        objective: ``f_t``.
        decisions: ``X``, shape ``(N, n')``; row ``i`` is agent ``i``'s copy of the fractional decision
            (``n' <= objective.n``; missing columns are items no agent owns, held at 0).
        partition: the agents' blocks.
        curvature: ``c``.
        n_samples: estimates averaged per agent (the paper uses one).
        z_sampling: ``"importance"``, ``"uniform"`` or ``"none"`` (see the module docstring).
        rng: source of ``z`` and ``R``.

    Returns:
        ``G``, shape ``(N, K)`` padded like ``partition.padded`` (0 on pads): ``G[i, k]`` estimates
        ``∂F^s/∂x_v`` at ``x_i`` for ``v = partition.padded[i, k]``.
    """
    n_agents, width = decisions.shape
    shape = (n_agents, n_samples)
    if z_sampling == "importance":
        z = sample_z(rng, shape, curvature)
        weight = np.full(shape, surrogate_scale(curvature))
    elif z_sampling == "uniform":
        z = rng.random(shape)
        weight = np.exp(curvature * (z - 1.0))
    else:
        z = np.ones(shape)
        weight = np.ones(shape)
    masks = np.zeros((n_agents, n_samples, objective.n), dtype=bool)
    masks[:, :, :width] = rng.random((n_agents, n_samples, width)) < z[:, :, None] * decisions[:, None, :]
    candidates = np.repeat(partition.padded, n_samples, axis=0)
    gains = objective.marginal_gains(masks.reshape(n_agents * n_samples, -1), candidates)
    estimate = (weight[:, :, None] * gains.reshape(n_agents, n_samples, -1)).mean(axis=1)
    return np.where(partition.valid, estimate, 0.0)
