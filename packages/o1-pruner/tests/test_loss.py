"""The PPO-clip loss: −w at ratio 1, zero gradient where the clip engages, token and sequence levels."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.o1_pruner import o1_pruner_loss
from paperpack.o1_pruner._reference import reference_loss
from paperpack.o1_pruner.loss import sequence_mean, token_log_probs


def test_loss_is_minus_w_at_ratio_one_and_its_gradient_is_minus_w() -> None:
    logps = torch.tensor([-1.3, -0.2, -2.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.7, -1.2, 0.0], dtype=torch.float64)
    losses = o1_pruner_loss(logps, logps.detach().clone(), weights, reduction="none")
    torch.testing.assert_close(losses, -weights)
    losses.sum().backward()
    torch.testing.assert_close(logps.grad, -weights)  # d(−w·r)/d lp = −w·r = −w at r = 1


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_gradient_is_zero_where_the_clip_engages(eps: float) -> None:
    ref = torch.zeros(4, dtype=torch.float64)
    # log-ratios chosen so r is outside [1 − ε, 1 + ε] on the side the weight favours, and inside elsewhere.
    log_ratio = torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    policy = log_ratio.clone().requires_grad_(True)
    losses = o1_pruner_loss(policy, ref, weights, cliprange=eps, reduction="none")
    losses.sum().backward()
    ratio = log_ratio.exp()
    # w > 0 and r > 1 + ε, w < 0 and r < 1 − ε: clipped, flat; the other two are pushed back (not clipped).
    assert policy.grad[0] == 0 and policy.grad[1] == 0
    torch.testing.assert_close(policy.grad[2:], -weights[2:] * ratio[2:])
    torch.testing.assert_close(
        losses[:2], -weights[:2] * torch.tensor([1 + eps, 1 - eps], dtype=torch.float64)
    )
    # Just inside the interval the gradient is the unclipped one.
    inside = torch.tensor([0.9 * eps], dtype=torch.float64, requires_grad=True)
    o1_pruner_loss(
        inside, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), cliprange=eps
    ).backward()
    assert inside.grad[0] == pytest.approx(-torch.exp(torch.tensor(0.9 * eps)).item())


def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (5,), generator=g)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).double()
    policy = -torch.rand(5, 8, generator=g, dtype=torch.float64) * 3 * mask
    ref = (policy + 0.3 * torch.randn(5, 8, generator=g, dtype=torch.float64)) * mask
    weights = torch.randn(5, generator=g, dtype=torch.float64)
    return policy, ref, weights, mask


@pytest.mark.parametrize("seed", range(4))
def test_sequence_and_token_levels_match_the_literal_reference(seed: int) -> None:
    policy, ref, weights, mask = _random_batch(seed)
    per_sample = [(policy[i][mask[i] > 0], ref[i][mask[i] > 0]) for i in range(5)]
    slow_seq = reference_loss(
        [p for p, _ in per_sample], [r for _, r in per_sample], weights.tolist(), 0.2, "sequence_mean"
    )
    fast_seq = o1_pruner_loss(sequence_mean(policy, mask), sequence_mean(ref, mask), weights, cliprange=0.2)
    torch.testing.assert_close(fast_seq, slow_seq)
    slow_tok = reference_loss(
        [p for p, _ in per_sample], [r for _, r in per_sample], weights.tolist(), 0.2, "token"
    )
    fast_tok = o1_pruner_loss(policy, ref, weights, cliprange=0.2, mask=mask)
    torch.testing.assert_close(fast_tok, slow_tok)
    assert o1_pruner_loss(policy, ref, weights, mask=mask, reduction="sum") == pytest.approx(
        5 * float(fast_tok)
    )


def test_token_log_probs_equal_log_softmax_and_mask_the_prompt() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, 3, 4, 5]])
    logps, mask = token_log_probs(logits, labels)
    expected = torch.log_softmax(logits[:, :-1], -1)
    for b in range(2):
        for t in range(5):
            label = int(labels[b, t + 1])
            assert mask[b, t] == (label != -100)
            if label != -100:
                assert logps[b, t] == pytest.approx(float(expected[b, t, label]), abs=1e-5)
    half, _ = token_log_probs(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, logps, atol=0.05, rtol=0)


def test_bad_input() -> None:
    x = torch.zeros(3)
    with pytest.raises(ConfigError, match=r"`cliprange` \(ε\) must be in \(0, 1\)"):
        o1_pruner_loss(x, x, x, cliprange=0.0)
    with pytest.raises(ConfigError, match="`weights` must be"):
        o1_pruner_loss(x, x, torch.zeros(2))
    with pytest.raises(ConfigError, match="differ"):
        o1_pruner_loss(x, torch.zeros(4), x)
    with pytest.raises(ConfigError, match="no completion token"):
        sequence_mean(torch.zeros(2, 3), torch.tensor([[1.0, 1, 0], [0, 0, 0]]))
