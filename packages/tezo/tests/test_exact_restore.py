"""Perturb-and-restore is exact: steps with κ = 0 leave the weights bit-identical in every dtype.

Issue 14's reproduction: on a bfloat16 1024 × 1024 weight, 100 TeZO-SGD steps with κ = 0 used to change 94 %
of the entries and move the weights by 3.8 % of their norm (``benchmarks/restore_drift.py`` prints the
figures); float32 drifted too, by float32 rounding.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor

from paperpack.tezo import METHODS, ZOOptimizer, ZOTrainer
from paperpack.tezo import directions as est
from paperpack.tezo.perturbation import perturb_, restore_

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
CONSTANT = torch.tensor(2.5)


def _bits(tensor: Tensor) -> Tensor:
    return tensor.detach().view(
        {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.itemsize]
    )


def assert_bit_identical(params: list[Tensor], start: list[Tensor]) -> None:
    for index, (param, original) in enumerate(zip(params, start, strict=True)):
        changed = int((_bits(param) != _bits(original)).sum())
        assert changed == 0, (
            f"parameter {index} ({param.dtype}): {changed} of {param.numel()} entries changed"
        )


def _weights(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """A matrix, a bias, a 3-D kernel and a matrix of tiny entries (most of its entries need the patch).

    No entry is zero: a zero update adds ±0.0, which turns a −0.0 weight into +0.0 (the same value; the
    restore itself keeps −0.0, see the block test).
    """
    generator = torch.Generator().manual_seed(0)
    shapes_scales = [((24, 16), 0.02), ((24,), 0.02), ((4, 3, 5), 0.5), ((16, 16), 1e-6)]
    weights = []
    for shape, scale in shapes_scales:
        values = torch.randn(shape, generator=generator) * scale
        values = torch.where(values.abs() < 1e-7, 1e-7, values)  # representable in float16, not zero
        weights.append(torch.nn.Parameter(values.to(dtype)))
    return weights


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_hundred_steps_at_zero_kappa_leave_weights_bit_identical(
    method: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(est, "BLOCK_NUMEL", 128)  # several blocks per parameter, edges included
    params = _weights(dtype)
    start = [p.detach().clone() for p in params]
    optimizer = ZOOptimizer(params, method=method, lr=1e-3, eps=1e-3, rank=4, seed=3, lozo_interval=7)
    for _ in range(100):
        optimizer.step(lambda: CONSTANT)
    assert optimizer.last_kappa == 0.0
    assert_bit_identical(params, start)


def test_issue_reproduction_bf16_1024() -> None:
    """The issue's case: bfloat16 1024 × 1024, entries N(0, 0.02²), TeZO-SGD, 100 steps at κ = 0."""
    generator = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter((torch.randn(1024, 1024, generator=generator) * 0.02).to(torch.bfloat16))
    start = W.detach().clone()
    optimizer = ZOOptimizer([W], method="tezo_sgd", lr=1e-5, eps=1e-3, rank=8)
    for _ in range(100):
        optimizer.step(lambda: CONSTANT)
    assert_bit_identical([W], [start])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_sided_estimate_restores_exactly(dtype: torch.dtype) -> None:
    params = _weights(dtype)
    start = [p.detach().clone() for p in params]
    optimizer = ZOOptimizer(params, method="tezo_adam", lr=1e-3, rank=4, estimate="one_sided")
    for _ in range(100):
        optimizer.step(lambda: CONSTANT)
    assert_bit_identical(params, start)


def test_a_failing_closure_leaves_the_weights_restored() -> None:
    params = _weights(torch.bfloat16)
    start = [p.detach().clone() for p in params]
    optimizer = ZOOptimizer(params, method="tezo_adam", lr=1e-3, rank=4)
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:  # at θ − ρZ
            raise RuntimeError("out of memory in the second forward pass")
        return CONSTANT

    with pytest.raises(RuntimeError, match="second forward pass"):
        optimizer.step(closure)
    assert_bit_identical(params, start)
    optimizer.step(lambda: CONSTANT)  # and the optimizer keeps working
    assert_bit_identical(params, start)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_perturb_and_restore_on_a_block(dtype: torch.dtype) -> None:
    """The block-level pair, with entries that plain rounding cannot undo: tiny values, powers of two."""
    generator = torch.Generator().manual_seed(1)
    values = torch.cat([
        torch.randn(500, generator=generator) * 0.02,
        torch.randn(100, generator=generator) * 1e-7,
        torch.tensor([0.0, -0.0, 2.0**-6, -(2.0**-6), 1.0, float("inf"), float("nan")]),
    ])  # fmt: skip
    block = values.to(dtype)
    original = block.clone()
    delta = (
        torch.randn(block.numel(), generator=generator).to(torch.promote_types(dtype, torch.float32)) * 1e-3
    )
    for sign in (+1, -1):
        patch = perturb_(block, delta, sign)
        assert not torch.equal(_bits(block), _bits(original))
        restore_(block, delta, sign, patch)
        assert torch.equal(_bits(block), _bits(original))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_zo_trainer_at_zero_kappa_leaves_the_model_bit_identical(
    dtype: torch.dtype, tiny_lm: Any, make_args: Any, tiny_lm_dataset: Any, tiny_collator: Any
) -> None:
    """Through ``ZOTrainer`` on a model loaded in each dtype: a constant loss gives κ = 0 at every step."""
    model = copy.deepcopy(tiny_lm[0]).to(dtype)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    args = make_args(zo_method="tezo_adam", max_steps=20, learning_rate=1e-2, logging_steps=5)
    trainer = ZOTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset,
        data_collator=tiny_collator,
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum() * 0 + 2.5,
    )
    trainer.train()
    names = list(start)
    assert_bit_identical([model.state_dict()[name] for name in names], [start[name] for name in names])
