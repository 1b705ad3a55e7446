"""compute_fisher and compute_gram against direct computations, and their use by fisher and regmean."""

from __future__ import annotations

import copy

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.r_tsvm import compute_fisher, compute_gram, merge_state_dicts


@pytest.fixture(scope="module")
def lm(tiny_lm):
    model, tokenizer = tiny_lm
    batch = tokenizer(
        ["the river was large", "a small model", "merge the weights now"], return_tensors="pt", padding=True
    )
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return copy.deepcopy(model), dict(batch)


def test_fisher_is_the_mean_of_per_example_squared_gradients(lm):
    model, batch = lm
    fisher = compute_fisher(model, [batch])
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(batch["input_ids"].shape[0]):
        model.zero_grad()
        example = {k: v[i : i + 1] for k, v in batch.items()}
        model(**example).loss.backward()
        for name, p in model.named_parameters():
            expected[name] += p.grad.square() / batch["input_ids"].shape[0]
    model.zero_grad(set_to_none=True)
    assert set(fisher) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(fisher[name], value, rtol=1e-4, atol=1e-10)
        assert (fisher[name] >= 0).all()
    sampled = compute_fisher(model, [batch], empirical=False, seed=0)
    assert all(torch.isfinite(v).all() for v in sampled.values())
    assert sampled.keys() == fisher.keys()


def test_gram_is_xtx_over_the_unpadded_tokens():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask=None):
            return self.net(input_ids)

    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    grams = compute_gram(Wrapper(), [{"input_ids": x, "attention_mask": mask}])
    kept = x[mask.bool()]
    torch.testing.assert_close(grams["net.0.weight"], kept.T @ kept / 8)
    hidden = torch.relu(net[0](kept))
    torch.testing.assert_close(grams["net.2.weight"], hidden.T @ hidden / 8)


def test_statistics_feed_fisher_and_regmean(lm):
    model, batch = lm
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in state.items()}
    fishers = [compute_fisher(model, [batch])] * 2
    merged = merge_state_dicts("fisher", None, [state, other], statistics=fishers)
    assert all(torch.isfinite(v).all() for v in merged.values())
    grams = [compute_gram(model, [batch])] * 2
    merged = merge_state_dicts("regmean", None, [state, other], statistics=grams)
    key = "model.layers.0.mlp.up_proj.weight"
    assert key in grams[0]
    torch.testing.assert_close(merged[key], (state[key] + other[key]) / 2, atol=1e-4, rtol=1e-3)


def test_statistics_need_batches():
    with pytest.raises(ConfigError, match="`batches` must hold at least one batch"):
        compute_gram(torch.nn.Linear(2, 2), [])
