"""Slow, literal reference implementation of MeZO, TeZO and LOZO, for the tests.

Everything is written as the equations read: each step materialises every direction Z_t in full (TeZO's as
the sum of r outer products τ_{t,s}·u_s v_sᵀ), evaluates the loss on perturbed copies of θ (never in place),
and applies the update rules with explicit moments and bias corrections. Only the random draws are shared with
the fast code (the seeded samplers of :mod:`paperpack.tezo.directions`), so both see the same Z_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from paperpack.tezo.choices import method_parts
from paperpack.tezo.directions import dense_noise, lozo_factors, tezo_coefficients, tezo_factors

__all__ = ["ReferenceSettings", "reference_run"]

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class ReferenceSettings:
    """The hyperparameters of a reference run (the same names as :class:`~paperpack.tezo.ZOOptimizer`)."""

    method: str
    lr: float
    eps: float
    rank: int = 8
    beta1: float = 0.9
    beta2: float = 0.999
    seed: int = 0
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    scale_by_rank: bool = False
    estimate: str = "two_sided"
    one_dim: str = "dense"
    lozo_interval: int = 100


@dataclass
class _Draw:
    """One parameter's direction at step t: the full Z_t and, for TeZO, (τ_t, U, V)."""

    Z: Tensor
    low_rank: tuple[Tensor, Tensor, Tensor] | None = None


@dataclass
class _Moments:
    m: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape) // shape[0]


def _outer_sum(weights: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Σ_s weights_s · left[:, s] right[:, s]ᵀ, one outer product at a time."""
    total = torch.zeros(left.shape[0], right.shape[0], dtype=left.dtype)
    for s in range(weights.shape[0]):
        total = total + float(weights[s]) * torch.outer(left[:, s], right[:, s])
    return total


def _draw(p: Tensor, index: int, t: int, cfg: ReferenceSettings) -> _Draw:
    family, _ = method_parts(cfg.method)
    shape = tuple(p.shape)
    if p.ndim < 2 and cfg.one_dim == "freeze":
        return _Draw(torch.zeros_like(p))
    if p.ndim < 2 or family == "mezo":
        return _Draw(dense_noise(shape, cfg.seed, t, index, device=_CPU, dtype=p.dtype))  # Z_t ~ N(0, I)
    rows, cols = _matrix_shape(shape)
    if family == "tezo":
        U, V = tezo_factors(rows, cols, cfg.rank, cfg.seed, index, device=_CPU, dtype=p.dtype)
        tau = tezo_coefficients(cfg.rank, cfg.seed, t, index, scale_by_rank=cfg.scale_by_rank, device=_CPU)
        return _Draw(_outer_sum(tau, U, V).reshape(shape), (tau, U, V))  # Z_t = Σ_s τ_{t,s} u_s v_sᵀ
    U, V = lozo_factors(
        rows,
        cols,
        cfg.rank,
        cfg.seed,
        step=t,
        index=index,
        interval=cfg.lozo_interval,
        device=_CPU,
        dtype=p.dtype,
    )
    scale = 1.0 / math.sqrt(cfg.rank) if cfg.scale_by_rank else 1.0
    return _Draw((scale * (U @ V.T)).reshape(shape))  # Z_t = U_t V_kᵀ


def _kappa(
    theta: list[Tensor], draws: list[_Draw], loss_fn: Callable[[list[Tensor]], Tensor], cfg: ReferenceSettings
) -> float:
    rho = cfg.eps
    plus = float(loss_fn([p + rho * d.Z for p, d in zip(theta, draws, strict=True)]))
    if cfg.estimate == "two_sided":
        minus = float(loss_fn([p - rho * d.Z for p, d in zip(theta, draws, strict=True)]))
        return (plus - minus) / (2 * rho)
    return (plus - float(loss_fn(list(theta)))) / rho


def _low_rank_step(
    low_rank: tuple[Tensor, Tensor, Tensor],
    kappa: float,
    *,
    index: int,
    k: int,
    moments: _Moments,
    cfg: ReferenceSettings,
) -> Tensor:
    """TeZO's step direction for one matrix: U diag(g) Vᵀ, U diag(m) Vᵀ or M / (√S + ε)."""
    tau, U, V = low_rank
    rule = method_parts(cfg.method)[1]
    g = kappa * tau.to(moments.m[index].dtype)
    if rule == "sgd":
        return _outer_sum(g, U, V)
    moments.m[index] = cfg.beta1 * moments.m[index] + (1 - cfg.beta1) * g
    if rule == "momentum":
        return _outer_sum(moments.m[index], U, V)
    moments.v[index] = cfg.beta2 * moments.v[index] + (1 - cfg.beta2) * g * g
    m_hat = moments.m[index] / (1 - cfg.beta1**k)
    v_hat = moments.v[index] / (1 - cfg.beta2**k)
    M = _outer_sum(m_hat, U, V)
    S = _outer_sum(v_hat, U * U, V * V)  # the separable second moment
    return M / (torch.sqrt(S) + cfg.adam_eps)


def _dense_step(
    Z: Tensor, kappa: float, index: int, k: int, *, moments: _Moments, cfg: ReferenceSettings
) -> Tensor:
    """MeZO's step direction for one parameter: g, m or m̂ / (√v̂ + ε), with g = κ·Z_t."""
    family, rule = method_parts(cfg.method)
    g = kappa * Z
    if rule == "sgd" or family == "lozo":
        return g
    moments.m[index] = cfg.beta1 * moments.m[index] + (1 - cfg.beta1) * g
    if rule == "momentum":
        return moments.m[index]
    moments.v[index] = cfg.beta2 * moments.v[index] + (1 - cfg.beta2) * g * g
    m_hat = moments.m[index] / (1 - cfg.beta1**k)
    v_hat = moments.v[index] / (1 - cfg.beta2**k)
    return m_hat / (torch.sqrt(v_hat) + cfg.adam_eps)


def reference_run(
    params: Sequence[Tensor],
    loss_fn: Callable[[list[Tensor]], Tensor],
    settings: ReferenceSettings,
    steps: int,
) -> list[list[Tensor]]:
    """Run ``steps`` zeroth-order steps from ``params`` (not modified) and return θ after every step."""
    cfg = settings
    family, _ = method_parts(cfg.method)
    theta = [p.detach().clone() for p in params]
    moments = _Moments()
    for p in theta:
        low_rank = p.ndim >= 2 and family == "tezo"
        size = (cfg.rank,) if low_rank else tuple(p.shape)
        dtype = torch.promote_types(p.dtype, torch.float32) if low_rank else p.dtype
        moments.m.append(torch.zeros(size, dtype=dtype))
        moments.v.append(torch.zeros(size, dtype=dtype))
    history: list[list[Tensor]] = []
    for t in range(steps):
        draws = [_draw(p, index, t, cfg) for index, p in enumerate(theta)]
        kappa = _kappa(theta, draws, loss_fn, cfg)
        new_theta: list[Tensor] = []
        for index, (p, d) in enumerate(zip(theta, draws, strict=True)):
            if p.ndim < 2 and cfg.one_dim == "freeze":
                new_theta.append(p)
                continue
            # W ← W − η·λ·W on matrices only: 1-D parameters (biases, norms) are never decayed.
            decayed = p * (1 - cfg.lr * cfg.weight_decay) if p.ndim >= 2 else p
            if d.low_rank is not None:
                step = _low_rank_step(
                    d.low_rank, kappa, index=index, k=t + 1, moments=moments, cfg=cfg
                ).reshape(p.shape)
            else:
                step = _dense_step(d.Z, kappa, index, t + 1, moments=moments, cfg=cfg)
            new_theta.append(decayed - cfg.lr * step)
        theta = new_theta
        history.append([p.clone() for p in theta])
    return history
