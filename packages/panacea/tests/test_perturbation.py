"""Perturbation utilities: selection, the closed form, applying, random baselines, files, per-layer coefficients."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.testing.contracts import assert_state_dicts_equal, check_fails_cleanly
from paperpack.panacea import (
    apply_perturbation,
    global_norm,
    layer_safety_coefficients,
    load_perturbation,
    perturbation_from_gradient,
    random_perturbation,
    save_perturbation,
    select_parameters,
)
from paperpack.panacea.perturbation import epsilon_scale
from paperpack.panacea.sampling import HarmfulBatches

from .conftest import trainable_state


def test_select_parameters_by_pattern(fresh_model) -> None:
    model = fresh_model()
    assert list(select_parameters(model)) == [n for n, _ in model.named_parameters()]
    chosen = select_parameters(model, [r"layers\.1\.self_attn\.(q|k)_proj"])
    assert list(chosen) == [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
    ]
    model.model.layers[1].self_attn.q_proj.weight.requires_grad_(False)
    assert list(select_parameters(model, [r"layers\.1\.self_attn\.(q|k)_proj"])) == [
        "model.layers.1.self_attn.k_proj.weight"
    ]


def test_closed_form_has_norm_rho_and_the_gradient_direction() -> None:
    generator = torch.Generator().manual_seed(0)
    gradient = {"a": torch.randn(3, 4, generator=generator), "b": torch.randn(5, generator=generator)}
    epsilon = perturbation_from_gradient(gradient, rho=0.7)
    assert global_norm(epsilon.values()) == pytest.approx(0.7, rel=1e-6)
    flat_g = torch.cat([gradient["a"].flatten(), gradient["b"]])
    flat_e = torch.cat([epsilon["a"].flatten(), epsilon["b"]])
    assert float(torch.nn.functional.cosine_similarity(flat_g, flat_e, dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert perturbation_from_gradient({"a": torch.zeros(2)}, rho=1.0)["a"].tolist() == [0.0, 0.0]
    assert epsilon_scale(math.inf, 1.0) == 0.0 and epsilon_scale(math.nan, 1.0) == 0.0
    with pytest.raises(ConfigError, match="`rho` must be > 0, got 0"):
        perturbation_from_gradient(gradient, rho=0)


def test_global_norm_accumulates_low_precision_in_float32() -> None:
    tensors = [torch.full((4096,), 0.01, dtype=torch.bfloat16)] * 4
    assert global_norm(tensors) == pytest.approx(
        math.sqrt(4 * 4096) * float(torch.tensor(0.01, dtype=torch.bfloat16))
    )


def test_apply_perturbation_adds_and_removes(fresh_model) -> None:
    model = fresh_model()
    before = trainable_state(model)
    noise = random_perturbation(model, 2.0, seed=1, parameters=[r"mlp\.up_proj"])
    apply_perturbation(model, noise, scale=0.5)
    for name, weight in trainable_state(model).items():
        expected = before[name] + 0.5 * noise[name] if name in noise else before[name]
        torch.testing.assert_close(weight, expected)
    apply_perturbation(model, noise, scale=-0.5)
    assert_state_dicts_equal(trainable_state(model), before, atol=1e-7, rtol=0)


def _last(eps: dict[str, torch.Tensor], value: object) -> dict[str, object]:
    """``eps`` with its last entry replaced by ``value`` (the fine entries come first)."""
    *_, last = eps
    return {**eps, last: value}


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (
            lambda eps: {**eps, "model.missing.weight": torch.zeros(2)},
            "the perturbation names 1 tensor(s) the model does not have",
        ),
        (
            lambda eps: _last(eps, torch.zeros(1, 64)),
            "has shape (1, 64), but the tensor of that name in the model has shape (64,)",
        ),
        (lambda eps: _last(eps, torch.full((64,), math.nan)), "must hold finite floating-point values"),
        (lambda eps: _last(eps, "x"), "is a str, not a tensor"),
        (lambda eps: {}, "`perturbation` must be a non-empty mapping"),
    ],
)
def test_apply_perturbation_checks_everything_before_changing_anything(
    make_bad, message: str, fresh_model
) -> None:
    model = fresh_model()
    before = trainable_state(model)
    good = random_perturbation(model, 1.0, seed=0, parameters=[r"layers\.0\.mlp\.down_proj", r"layers\.1\."])
    # The first entries are fine; the bad one comes last, and still nothing is applied.
    bad = make_bad(good)
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_perturbation(model, bad)
    assert_state_dicts_equal(trainable_state(model), before)
    with pytest.raises(ConfigError, match="`scale` must be a finite number, got inf"):
        apply_perturbation(model, good, scale=math.inf)


def test_random_perturbation_is_seeded_and_scaled(fresh_model) -> None:
    model = fresh_model()
    state = torch.random.get_rng_state()
    first = random_perturbation(model, 0.25, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is untouched
    assert global_norm(first.values()) == pytest.approx(0.25, rel=1e-6)
    assert_state_dicts_equal(random_perturbation(model, 0.25, seed=3), first)
    other = random_perturbation(model, 0.25, seed=4)
    assert not torch.equal(other["lm_head.weight"], first["lm_head.weight"])
    with pytest.raises(ConfigError, match="`norm` must be > 0, got 0"):
        random_perturbation(model, 0, seed=0)


def test_save_and_load_round_trip(tmp_path: Path, fresh_model) -> None:
    model = fresh_model()
    noise = random_perturbation(model, 1.0, seed=0, parameters=["self_attn"])
    path = save_perturbation(noise, tmp_path / "eps.safetensors", metadata={"rho": "1.0"})
    assert_state_dicts_equal(load_perturbation(path), noise)
    from paperpack.core.checkpoints import LazyStateDict

    metadata = LazyStateDict(path).metadata
    assert metadata["content"] == "paperpack-panacea-perturbation" and metadata["rho"] == "1.0"
    assert float(metadata["norm"]) == pytest.approx(1.0, rel=1e-6)


def test_save_and_load_refuse_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "eps.safetensors"
    check_fails_cleanly(
        lambda: save_perturbation({}, target), ConfigError, "non-empty mapping", output=target
    )
    check_fails_cleanly(
        lambda: save_perturbation({"w": torch.tensor([math.inf])}, target),
        ConfigError,
        "non-finite",
        output=target,
    )
    check_fails_cleanly(
        lambda: save_perturbation({"w": torch.zeros(2)}, tmp_path / "eps.pt"),
        ConfigError,
        "one .safetensors file",
    )
    with pytest.raises(CheckpointNotFoundError):
        load_perturbation(tmp_path / "missing.safetensors")
    (tmp_path / "eps.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle"):
        load_perturbation(tmp_path / "eps.bin")


def test_layer_safety_coefficients(fresh_model) -> None:
    model = fresh_model()
    noise = random_perturbation(model, 1.0, seed=0)
    rows = layer_safety_coefficients(noise, model)
    labels = [row.layer for row in rows]
    assert labels[:2] == ["layer 0", "layer 1"]
    assert set(labels[2:]) == {"model.embed_tokens", "model.norm", "lm_head"}
    assert sum(row.share for row in rows) == pytest.approx(1.0, rel=1e-6)
    layer0 = [n for n in noise if ".layers.0." in n]
    assert rows[0].perturbation_norm == pytest.approx(global_norm(noise[n] for n in layer0), rel=1e-6)
    weights = dict(model.named_parameters())
    assert rows[0].coefficient == pytest.approx(
        rows[0].perturbation_norm / global_norm(weights[n].detach() for n in layer0), rel=1e-6
    )
    with pytest.raises(ConfigError, match="the model has no parameter 'nope'"):
        layer_safety_coefficients({"nope": torch.zeros(1)}, model)


def test_harmful_batches_are_a_function_of_the_position() -> None:
    batches = HarmfulBatches(10, 3, seed=5)
    assert batches.per_epoch == 3
    epoch0 = [batches.indices(q) for q in range(3)]
    assert len({i for batch in epoch0 for i in batch}) == 9  # no repeats within an epoch
    assert HarmfulBatches(10, 3, seed=5).indices(4) == batches.indices(4)  # no hidden state
    assert batches.indices(3) != batches.indices(0) or batches.indices(4) != batches.indices(1)  # reshuffled
    ranks = [HarmfulBatches(10, 2, seed=5, rank=r, world_size=2).indices(1) for r in range(2)]
    assert ranks[0] + ranks[1] == HarmfulBatches(10, 4, seed=5).indices(1)
    with pytest.raises(ConfigError, match="fewer than one harmful batch"):
        HarmfulBatches(3, 2, seed=0, world_size=2)
