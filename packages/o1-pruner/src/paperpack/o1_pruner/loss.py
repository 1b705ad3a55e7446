r"""The O1-Pruner loss on plain tensors: per-token log-probabilities and the weighted PPO-clip objective.

With w the training weight of a sample y of problem x, π_θ the model being trained and π_ref the frozen
reference that drew y, the official code's loss (sequence level, length-normalized) is

    lp_θ(y) = (1/|y|) Σ_t log π_θ(y_t | x, y_<t),   lp_ref(y) likewise under π_ref,
    r(y) = exp(lp_θ(y) − lp_ref(y)),
    ℓ(y) = max(−w · r(y), −w · clip(r(y), 1 − ε, 1 + ε)),

averaged over the samples of the batch. ``ratio_level="token"`` (ours) clips one ratio per token,
r_t = exp(log π_θ(y_t|·) − log π_ref(y_t|·)), and averages the per-token ℓ_t over the sample's tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError

__all__ = ["o1_pruner_loss", "sequence_mean", "token_log_probs"]

IGNORE_INDEX = -100


def token_log_probs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log π(y_t | y_<t) of each label token, from a causal LM's logits, computed in float32 at least.

    The logits at position t score the token at t + 1 (the usual shift). Only the picked entries and one
    log-sum-exp per position are formed, not a second vocabulary-sized tensor of log-probabilities (bf16 and
    fp16 logits are upcast one sequence at a time).

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` token ids, ``-100`` where no log-probability is wanted (prompt, padding).

    Returns:
        ``(logps, mask)``, both ``(B, T − 1)``: the log-probabilities (0 where masked) and the float mask.
    """
    logits = logits[:, :-1]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        logps = logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    else:
        logps = torch.stack(
            [
                torch.log_softmax(row.float(), dim=-1).gather(-1, row_index).squeeze(-1)
                for row, row_index in zip(logits, index, strict=True)
            ]
        )
    return logps * mask, mask.to(logps.dtype)


def sequence_mean(logps: Tensor, mask: Tensor) -> Tensor:
    """(1/|y|) Σ_t log π(y_t | ·): the length-normalized log-probability of each sequence, ``(B,)``.

    Raises:
        ConfigError: when a sequence has no label token (|y| = 0).
    """
    counts = mask.sum(dim=-1)
    if bool((counts == 0).any()):
        raise ConfigError("a sample has no completion token to score (|y| = 0)")
    return (logps * mask).sum(dim=-1) / counts


def o1_pruner_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    weights: Tensor,
    *,
    cliprange: float = 0.2,
    mask: Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""The weighted PPO-clip loss ℓ = max(−w·r, −w·clip(r, 1−ε, 1+ε)) of O1-Pruner.

    At r = 1 (the first step, θ = θ_ref) ℓ = −w and its gradient is −w ∇r: samples with w > 0 (short and
    correct relative to the reference) are made likelier, those with w < 0 less likely. The clip stops the
    push once r leaves [1−ε, 1+ε] in the direction w favours.

    Args:
        policy_logps: length-normalized sequence log-probabilities lp_θ(y), ``(B,)``; or, with ``mask``,
            per-token log-probabilities ``(B, T)`` (the token-level ratio).
        ref_logps: the same under the frozen reference (no gradient flows into it).
        weights: w of each sample, ``(B,)``.
        cliprange: ε in (0, 1).
        mask: ``(B, T)``, 1 on completion tokens; selects the token-level ratio, whose per-token losses are
            averaged over each sample's tokens.
        reduction: ``"mean"`` over samples (the official code), ``"sum"``, or ``"none"`` (per sample).

    Returns:
        The loss (a scalar, or ``(B,)`` with ``reduction="none"``).

    Raises:
        ConfigError: for mismatched shapes, ε outside (0, 1) or an unknown reduction.

    Examples:
        >>> import torch
        >>> from paperpack.o1_pruner import o1_pruner_loss
        >>> lp = torch.tensor([-1.0, -2.0])
        >>> o1_pruner_loss(lp, lp, torch.tensor([0.5, -1.0]), reduction="none")  # r = 1: ℓ = −w
        tensor([-0.5000,  1.0000])
    """
    if not 0.0 < cliprange < 1.0:
        raise ConfigError(f"`cliprange` (ε) must be in (0, 1), got {cliprange!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}")
    if policy_logps.shape != ref_logps.shape:
        raise ConfigError(
            f"`policy_logps` {tuple(policy_logps.shape)} and `ref_logps` {tuple(ref_logps.shape)} differ"
        )
    expected = policy_logps.dim() if mask is None else 2
    if policy_logps.dim() != expected or (mask is not None and mask.shape != policy_logps.shape):
        raise ConfigError(
            "sequence-level log-probabilities must be (B,), token-level ones (B, T) with a mask of that "
            f"shape; got {tuple(policy_logps.shape)} and mask "
            f"{None if mask is None else tuple(mask.shape)}"
        )
    if weights.shape != policy_logps.shape[:1]:
        raise ConfigError(f"`weights` must be ({policy_logps.shape[0]},), got {tuple(weights.shape)}")
    w = weights.to(policy_logps.dtype)
    if mask is not None:
        w = w.unsqueeze(-1)
    ratio = torch.exp(policy_logps - ref_logps.detach())
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    losses = torch.maximum(-w * ratio, -w * clipped)
    if mask is not None:
        losses = sequence_mean(losses, mask)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
