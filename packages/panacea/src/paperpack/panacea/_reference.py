"""Slow, literal reference of one Panacea step, for the tests.

Written as the paper's algorithm reads (in the order of the official code: g, then h0, then h1), with every
gradient from ``torch.autograd.grad`` of a functional call on explicit weight dicts: the model's parameters
are never modified and nothing is accumulated in ``.grad``.

    g  = ∇_w L(w; task batch)
    h0 = ∇_w L(w; harmful batch)
    ε  = ρ · h0 / ‖h0‖₂                     (global L2 norm over the perturbed tensors; zero elsewhere)
    h1 = ∇_w min(L(w + ε; harmful batch), C)  (ε held fixed: the code ignores ∂ε/∂w)
    G  = g − λ (h1 − h0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ReferenceStep", "objective", "reference_step"]


@dataclass
class ReferenceStep:
    """The reference's gradients and losses for one step (name → tensor over the trainable parameters)."""

    gradient: dict[str, Tensor]
    g: dict[str, Tensor]
    h0: dict[str, Tensor]
    h1: dict[str, Tensor]
    epsilon: dict[str, Tensor]
    task_loss: float
    harmful_loss: float
    harmful_loss_perturbed: float


def _loss(model: nn.Module, weights: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
    """The causal-LM loss: mean cross-entropy of the next token over positions whose label is not -100.

    Computed here from the logits, in their dtype (transformers' own loss casts the logits to float32, which
    would hide float64 precision from the finite-difference test).
    """
    frozen = {name: p for name, p in model.named_parameters() if name not in weights}
    buffers = dict(model.named_buffers())
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = functional_call(model, {**frozen, **buffers, **weights}, args=(), kwargs=inputs).logits
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _grad(
    model: nn.Module, weights: dict[str, Tensor], batch: Mapping[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    loss = _loss(model, weights, batch)
    grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    return loss, {
        name: torch.zeros_like(w) if g is None else g
        for (name, w), g in zip(weights.items(), grads, strict=True)
    }


def reference_step(
    model: nn.Module,
    task_batch: Mapping[str, Any],
    harmful_batch: Mapping[str, Any],
    *,
    rho: float,
    lam: float,
    clamp: float | None,
    perturbed: Sequence[str] | None = None,
) -> ReferenceStep:
    """One Panacea step's gradient G = g − λ(h1 − h0) at the model's current weights.

    Args:
        model: a module whose forward takes the batches' keys and returns an output with ``.loss``.
        task_batch: the user's fine-tuning batch (gives g).
        harmful_batch: the harmful batch (gives h0 and h1).
        rho: ρ.
        lam: λ.
        clamp: C, or None for no clamp.
        perturbed: names of the parameters ε perturbs; None: every trainable parameter.
    """
    weights = {
        name: p.detach().clone().requires_grad_(True)
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    names = list(weights) if perturbed is None else list(perturbed)
    task_loss, g = _grad(model, weights, task_batch)
    harmful_loss, h0 = _grad(model, weights, harmful_batch)
    norm = math.sqrt(sum(float((h0[name].double() ** 2).sum()) for name in names))
    scale = rho / norm if norm > 0 else 0.0
    epsilon = {name: h0[name] * scale for name in names}
    shifted = {
        name: (w.detach() + epsilon[name] if name in epsilon else w.detach()).requires_grad_(True)
        for name, w in weights.items()
    }
    perturbed_loss = _loss(model, shifted, harmful_batch)
    perturbed_loss_clamped = perturbed_loss if clamp is None else torch.clamp(perturbed_loss, max=clamp)
    grads = torch.autograd.grad(perturbed_loss_clamped, list(shifted.values()), allow_unused=True)
    h1 = {
        name: torch.zeros_like(w) if gr is None else gr
        for (name, w), gr in zip(shifted.items(), grads, strict=True)
    }
    gradient = {name: g[name] - lam * (h1[name] - h0[name]) for name in weights}
    return ReferenceStep(
        gradient=gradient,
        g=g,
        h0=h0,
        h1=h1,
        epsilon=epsilon,
        task_loss=float(task_loss.detach()),
        harmful_loss=float(harmful_loss.detach()),
        harmful_loss_perturbed=float(perturbed_loss.detach()),
    )


def objective(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    epsilon: Mapping[str, Tensor],
    task_batch: Mapping[str, Any],
    harmful_batch: Mapping[str, Any],
    *,
    lam: float,
    clamp: float | None,
) -> Tensor:
    """The minimised objective J(w) = g(w) − λ(min(h(w+ε), C) − h(w)), ε held fixed (finite differences)."""
    shifted = {name: w + epsilon[name] if name in epsilon else w for name, w in weights.items()}
    perturbed = _loss(model, shifted, harmful_batch)
    if clamp is not None:
        perturbed = torch.clamp(perturbed, max=clamp)
    return _loss(model, weights, task_batch) - lam * (perturbed - _loss(model, weights, harmful_batch))
