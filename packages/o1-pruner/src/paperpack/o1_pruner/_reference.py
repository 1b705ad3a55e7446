"""Slow, literal implementations of the paper's formulas, one sample at a time, for the tests.

Each follows the paper note's pseudocode line by line in plain Python floats (or one tensor per sample), with
none of the batching, masking or vectorization of the fast code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["reference_aes", "reference_loss", "reference_reward", "reference_weights"]


def reference_reward(
    length: int, correct: bool, sample_lengths: list[int], sample_correct: list[bool], lam: float
) -> float:
    """W = (L_ref − L(y)) / L(y) + λ (A(y) − A_ref), as the official dataset construction writes it."""
    ref_length = sum(sample_lengths) / len(sample_lengths)
    ref_accuracy = sum(1 for c in sample_correct if c) / len(sample_correct)
    return (ref_length - length) / length + lam * ((1.0 if correct else 0.0) - ref_accuracy)


def reference_weights(rewards: list[float], low: float, high: float, zscore: bool) -> list[float]:
    """Clip each reward (``<= low`` to low, ``> high`` to high), then z-score with the population std."""
    clipped = []
    for reward in rewards:
        value = reward
        value = max(low, value)
        value = min(value, high)
        clipped.append(value)
    if not zscore:
        return clipped
    mean = sum(clipped) / len(clipped)
    variance = 0.0
    for value in clipped:
        variance += (value - mean) ** 2
    std = math.sqrt(variance / len(clipped))
    return [(value - mean) / std for value in clipped]


def reference_loss(
    policy_token_logps: list[Tensor],
    ref_token_logps: list[Tensor],
    weights: list[float],
    cliprange: float,
    level: str,
) -> Tensor:
    """The batch mean of max(−w·r, −w·clip(r)), one sample at a time (1-D tensors of token logps)."""
    total = torch.zeros((), dtype=torch.float64)
    for policy, ref, weight in zip(policy_token_logps, ref_token_logps, weights, strict=True):
        if level == "sequence_mean":
            ratio = torch.exp(policy.sum() / len(policy) - ref.sum() / len(ref))
            first = -weight * ratio
            second = -weight * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
            total = total + torch.maximum(first, second)
        else:
            per_token = torch.zeros((), dtype=torch.float64)
            for t in range(len(policy)):
                ratio = torch.exp(policy[t] - ref[t])
                first = -weight * ratio
                second = -weight * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
                per_token = per_token + torch.maximum(first, second)
            total = total + per_token / len(policy)
    return total / len(weights)


def reference_aes(acc: float, length: float, acc_base: float, length_base: float, *, alpha: float,
                  beta: float, gamma: float, sign_agnostic: bool) -> float:  # fmt: skip
    """AES as the paper's text writes it, or with β for drops too (its table)."""
    delta_length = (length_base - length) / length_base
    delta_acc = (acc - acc_base) / acc_base
    if delta_acc >= 0:
        return alpha * delta_length + beta * abs(delta_acc)
    if sign_agnostic:
        return alpha * delta_length + beta * abs(delta_acc)
    return alpha * delta_length - gamma * abs(delta_acc)
