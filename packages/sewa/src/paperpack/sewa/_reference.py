"""Slow, literal references the tests compare the package against.

``reference_select`` runs SeWA's selection one Monte Carlo sample, one snapshot and one scalar at a time. It
follows the algorithm line by line, with plain Python loops and scalars, and draws the same noise (one (M, K)
block of uniforms per iteration from a generator seeded with ``config.seed``) so that both see identical
randomness. The projection here is a bisection on the threshold v instead of the exact breakpoint search.

``reference_mean`` and ``reference_ema`` are the baselines' definitions: the mean of the chosen snapshots, and
the EMA recursion e_1 = w_1, e_t = β e_{t-1} + (1 - β) w_t.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.selection import ADAM_BETAS, ADAM_EPS, LOGIT_EPS, MASS_EPS, NOISE_EPS, LossFn

__all__ = ["reference_ema", "reference_mean", "reference_projection", "reference_select"]


def reference_mean(snapshots: Sequence[Mapping[str, Tensor]], indices: Sequence[int]) -> dict[str, Tensor]:
    """The mean of ``snapshots[i]`` over ``indices``, key by key: ``torch.stack(chosen).mean(0)``.

    Computed in float32 for half types; non-floating tensors come from the latest chosen snapshot.
    """
    chosen = [snapshots[i] for i in indices]
    result = {}
    for key, value in chosen[0].items():
        if not value.is_floating_point():
            result[key] = snapshots[max(indices)][key]
        elif value.dtype in (torch.float16, torch.bfloat16):
            result[key] = torch.stack([s[key].float() for s in chosen]).mean(0).to(value.dtype)
        else:
            result[key] = torch.stack([s[key] for s in chosen]).mean(0)
    return result


def reference_ema(snapshots: Sequence[Mapping[str, Tensor]], key: str, decay: float) -> Tensor:
    """The EMA recursion e_1 = w_1, e_t = β e_{t-1} + (1 - β) w_t for one key, in float64, at t = K."""
    ema = snapshots[0][key].double()
    for snapshot in snapshots[1:]:
        ema = decay * ema + (1.0 - decay) * snapshot[key].double()
    return ema


def reference_projection(
    s: Sequence[float], k: float, mode: str = "sum_eq_k", steps: int = 200
) -> list[float]:
    """x_i = clip(s_i - v, 0, 1) with Σ x_i = k, v by bisection (just the clip when Σ <= k is allowed)."""
    clipped = [min(max(value, 0.0), 1.0) for value in s]
    if mode == "sum_le_k" and sum(clipped) <= k:
        return clipped
    low, high = min(s) - 1.0, max(s)
    for _ in range(steps):
        v = (low + high) / 2.0
        total = sum(min(max(value - v, 0.0), 1.0) for value in s)
        if total > k:
            low = v
        else:
            high = v
    v = (low + high) / 2.0
    return [min(max(value - v, 0.0), 1.0) for value in s]


def reference_temperature(config: SeWAConfig, iteration: int) -> float:
    """τ_t written out per schedule."""
    if config.temperature_schedule == "constant" or config.iterations == 1:
        return config.temperature_start
    fraction = iteration / (config.iterations - 1)
    if config.temperature_schedule == "linear":
        return config.temperature_start + fraction * (config.temperature_end - config.temperature_start)
    return config.temperature_start * math.exp(
        fraction * (math.log(config.temperature_end) - math.log(config.temperature_start))
    )


def reference_select(
    snapshots: Sequence[Mapping[str, Tensor]], loss_fn: LossFn, config: SeWAConfig
) -> tuple[list[int], list[float], list[float]]:
    """Run SeWA literally. Returns (selected indices, final probabilities s, mean loss per iteration)."""
    size, k, samples = len(snapshots), config.k, config.mc_samples
    keys = [key for key in snapshots[0] if snapshots[0][key].is_floating_point()]
    generator = torch.Generator().manual_seed(config.seed)
    s = [k / size] * size
    first = [0.0] * size
    second = [0.0] * size
    history: list[float] = []
    beta1, beta2 = ADAM_BETAS
    for iteration in range(config.iterations):
        temperature = reference_temperature(config, iteration)
        uniforms = torch.rand((samples, size), generator=generator, dtype=torch.float64)
        gradient = [0.0] * size
        losses = []
        for j in range(samples):
            s_vars = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in s]
            masks = []
            for i in range(size):
                u = min(max(float(uniforms[j, i]), NOISE_EPS), 1.0 - NOISE_EPS)
                s_clamped = torch.clamp(s_vars[i], LOGIT_EPS, 1.0 - LOGIT_EPS)
                logit = torch.log(s_clamped) - torch.log(1.0 - s_clamped)
                masks.append(torch.sigmoid((logit + math.log(u) - math.log(1.0 - u)) / temperature))
            if config.averaging == "normalized":
                denominator = torch.clamp(sum(masks, torch.tensor(0.0, dtype=torch.float64)), min=MASS_EPS)
            else:
                denominator = torch.tensor(float(k), dtype=torch.float64)
            params: dict[str, Tensor] = {}
            for key in snapshots[0]:
                if key not in keys:
                    params[key] = snapshots[-1][key]
                    continue
                total = torch.zeros_like(snapshots[0][key])
                for i in range(size):
                    total = total + (masks[i] / denominator).to(total.dtype) * snapshots[i][key]
                params[key] = total
            loss = loss_fn(params)
            loss.backward()
            losses.append(float(loss.detach()))
            for i in range(size):
                grad = s_vars[i].grad
                gradient[i] += (float(grad) if grad is not None else 0.0) / samples
        step = iteration + 1
        for i in range(size):
            if config.mask_optimizer == "adam":
                first[i] = beta1 * first[i] + (1.0 - beta1) * gradient[i]
                second[i] = beta2 * second[i] + (1.0 - beta2) * gradient[i] ** 2
                m_hat = first[i] / (1.0 - beta1**step)
                v_hat = second[i] / (1.0 - beta2**step)
                s[i] = s[i] - config.mask_lr * m_hat / (math.sqrt(v_hat) + ADAM_EPS)
            else:
                s[i] = s[i] - config.mask_lr * gradient[i]
        s = reference_projection(s, k, config.projection)
        history.append(sum(losses) / samples)
    ranked = sorted(range(size), key=lambda i: (-s[i], -i))
    return sorted(ranked[:k]), s, history
