"""hrp_initialize end to end: step 0 equals the base, the preheat leaves no trace, stock PEFT loads the result."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoModelForCausalLM

import paperpack.hrp_lora.preheat as preheat_module
from paperpack.core.errors import ConfigError
from paperpack.hrp_lora import HRPConfig, hrp_initialize
from paperpack.hrp_lora._reference import reference_initialize
from paperpack.hrp_lora.adapters import PREHEAT_ADAPTER, lora_layers

ALL = LoraConfig(r=4, target_modules="all-linear")
FAST = HRPConfig(preheat_steps=3, preheat_lr=1e-3)


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _structure(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in model.named_modules()]


@pytest.mark.parametrize("scale", ["match_default", "unit", "sqrt_sv"])
def test_direction_init_computes_the_base_model_exactly(scale: str, fresh_model, batches) -> None:
    model = fresh_model()
    expected = _logits(copy.deepcopy(model), batches[0])
    peft_model = hrp_initialize(
        model, copy.deepcopy(ALL), batches, HRPConfig(preheat_steps=3, preheat_lr=1e-3, scale=scale)
    )
    assert torch.equal(_logits(peft_model, batches[0]), expected)
    layers = lora_layers(peft_model, "default")
    assert len(layers) == 14  # 7 linear layers x 2 decoder layers, lm_head excluded by "all-linear"
    for layer in layers.values():
        assert not layer.lora_B["default"].weight.any()
        A = layer.lora_A["default"].weight.detach()
        gram = A @ A.T
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-6, rtol=0)


def test_end_to_end_matches_the_reference_on_the_preheated_adapter(fresh_model, batches, monkeypatch) -> None:
    """The init written equals the literal reference applied to the adapter the preheat produced."""
    seen: dict[str, Any] = {}
    real = preheat_module.initialize_from_adapter

    def spy(model: nn.Module, source: str, target: str, config: HRPConfig) -> None:
        seen["expected"] = reference_initialize(model, source, target, config.init, config.scale)
        real(model, source, target, config)

    monkeypatch.setattr(preheat_module, "initialize_from_adapter", spy)
    config = HRPConfig(preheat_steps=4, preheat_lr=1e-3, init="carry_over")
    peft_model = hrp_initialize(
        fresh_model(), LoraConfig(r=3, target_modules=["q_proj", "up_proj"]), batches, config
    )
    for name, layer in lora_layers(peft_model, "default").items():
        A_ref, B_ref = seen["expected"][name]
        torch.testing.assert_close(layer.lora_A["default"].weight.detach().double(), A_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.lora_B["default"].weight.detach().double(), B_ref, rtol=0, atol=1e-5)


def test_preheat_takes_exactly_its_steps_and_leaves_no_trace(fresh_model, batches) -> None:
    model = fresh_model()
    original = _state(model)
    calls: list[int] = []
    steps: list[type] = []
    handle = register_optimizer_step_post_hook(lambda opt, *_: steps.append(type(opt)))

    def loss_fn(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(1)
        return module(**batch).loss

    rng = torch.get_rng_state()
    try:
        peft_model = hrp_initialize(
            model, copy.deepcopy(ALL), batches, HRPConfig(preheat_steps=5), loss_fn=loss_fn
        )
    finally:
        handle.remove()
    assert len(calls) == 5 and steps == [torch.optim.AdamW] * 5
    assert torch.equal(torch.get_rng_state(), rng), "the caller's random state moved"
    assert list(peft_model.peft_config) == ["default"] and peft_model.active_adapter == "default"
    for layer in lora_layers(peft_model, "default").values():
        for attribute in ("lora_A", "lora_B", "r", "scaling", "lora_alpha", "lora_dropout", "use_rslora"):
            assert PREHEAT_ADAPTER not in getattr(layer, attribute)
    assert not any(PREHEAT_ADAPTER in name for name, _ in peft_model.named_parameters())
    base = peft_model.get_base_model()
    for name, tensor in original.items():
        layered = name.replace(".weight", ".base_layer.weight")
        current = dict(base.named_parameters()).get(name, dict(base.named_parameters()).get(layered))
        assert current is not None and torch.equal(current, tensor), name
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert all(p.grad is None for p in peft_model.parameters()), "gradients were left behind"
    assert peft_model.training is model.training


def test_batches_are_cycled_from_lists_and_one_shot_iterators(fresh_model, batches) -> None:
    def order(source: Any) -> list[int]:
        seen: list[int] = []

        def loss_fn(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            seen.append(next(i for i, b in enumerate(batches) if b is batch))
            return module(**batch).loss

        hrp_initialize(
            fresh_model(),
            LoraConfig(r=2, target_modules=["q_proj"]),
            source,
            HRPConfig(preheat_steps=7),
            loss_fn=loss_fn,
        )
        return seen

    assert order(batches[:3]) == [0, 1, 2, 0, 1, 2, 0]
    assert order(iter(batches[:3])) == [0, 1, 2, 0, 1, 2, 0]
    assert order(b for b in batches[:2]) == [0, 1, 0, 1, 0, 1, 0]


def test_seed_makes_the_init_reproducible(fresh_model, batches) -> None:
    def adapter(seed: int) -> list[torch.Tensor]:
        model = hrp_initialize(
            fresh_model(),
            LoraConfig(r=2, target_modules=["v_proj"]),
            batches,
            HRPConfig(preheat_steps=2, seed=seed),
        )
        return [p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n]

    first, again, other = adapter(0), adapter(0), adapter(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_modules_to_save_dora_and_a_second_adapter(fresh_model, batches) -> None:
    model = fresh_model()
    head = model.lm_head.weight.detach().clone()
    expected = _logits(copy.deepcopy(model), batches[0])
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], use_dora=True)
    peft_model = hrp_initialize(model, config, batches, FAST)
    assert torch.equal(_logits(peft_model, batches[0]), expected)
    wrapper = peft_model.base_model.model.lm_head
    assert list(wrapper.modules_to_save) == ["default"]
    assert torch.equal(wrapper.modules_to_save["default"].weight, head)  # the preheat's head copy is gone
    assert wrapper.modules_to_save["default"].weight.requires_grad

    first = {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".default." in n}
    again = hrp_initialize(
        peft_model, LoraConfig(r=2, target_modules=["k_proj"]), batches, FAST, adapter_name="second"
    )
    assert again is peft_model and set(peft_model.peft_config) == {"default", "second"}
    assert peft_model.active_adapter == "second"
    assert all(torch.equal(p, first[n]) for n, p in peft_model.named_parameters() if ".default." in n)


def test_saved_adapter_loads_with_stock_peft_on_the_unmodified_base(
    fresh_model, batches, tmp_path: Path
) -> None:
    model = fresh_model()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    peft_model = hrp_initialize(
        model, copy.deepcopy(ALL), batches, HRPConfig(preheat_steps=3, preheat_lr=1e-3, init="carry_over")
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = _logits(peft_model, batches[0])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter")
    assert torch.equal(_logits(loaded, batches[0]), expected)
    assert not torch.equal(expected, _logits(AutoModelForCausalLM.from_pretrained(base_dir), batches[0]))


def test_gpt2_with_tied_embeddings(tiny_gpt2, batches) -> None:
    model = copy.deepcopy(tiny_gpt2)
    expected = _logits(copy.deepcopy(model), batches[0])
    peft_model = hrp_initialize(
        model, LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True), batches, FAST
    )
    assert torch.equal(_logits(peft_model, batches[0]), expected)
    assert len(lora_layers(peft_model, "default")) == 4


def _nan_loss(module: nn.Module, batch: Any) -> torch.Tensor:
    return module(**batch).loss * float("nan")


def _vector_loss(module: nn.Module, batch: Any) -> torch.Tensor:
    return module(**batch).logits.mean(dim=-1).flatten()


BAD: list[tuple[str, Callable[[nn.Module, list[Any]], Any], str]] = [
    (
        "rank above preheat rank",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=8, target_modules=["q_proj"]), b, HRPConfig(preheat_rank=4)
        ),
        r"`preheat_rank` \(4\) must be >= the adapter's rank r \(8",
    ),
    (
        "rank_pattern above preheat rank",
        lambda m, b: hrp_initialize(
            m,
            LoraConfig(r=2, target_modules=["q_proj"], rank_pattern={"q_proj": 16}),
            b,
            HRPConfig(preheat_rank=8),
        ),
        r"must be >= the adapter's rank r \(16",
    ),
    (
        "targets match nothing",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2, target_modules=["query"]), b, FAST),
        r"`target_modules` \{'query'\} matches no module of the model.*q_proj, k_proj",
    ),
    (
        "empty list",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2, target_modules=["q_proj"]), [], FAST),
        "`batches` is empty",
    ),
    (
        "empty iterator",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2, target_modules=["q_proj"]), iter([]), FAST),
        "`batches` is empty",
    ),
    (
        "non-scalar loss",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=2, target_modules=["q_proj"]), b, FAST, loss_fn=_vector_loss
        ),
        r"`loss_fn` must return a scalar tensor, got \(76,\)",
    ),
    (
        "NaN loss",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=2, target_modules=["q_proj"]), b, FAST, loss_fn=_nan_loss
        ),
        r"the preheat loss is not finite \(nan on this rank\) at step 1 of 3",
    ),
    (
        "batch not a mapping",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2, target_modules=["q_proj"]), [(1, 2)], FAST),
        "without `loss_fn`, each batch must be a mapping of model inputs",
    ),
    (
        "no labels",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=2, target_modules=["q_proj"]), [{"input_ids": b[0]["input_ids"]}], FAST
        ),
        "model\\(\\*\\*batch\\) returned no loss",
    ),
    (
        "pissa",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="pissa"), b, FAST
        ),
        "`lora_config.init_lora_weights` must be True",
    ),
    (
        "dora carry over",
        lambda m, b: hrp_initialize(
            m,
            LoraConfig(r=2, target_modules=["q_proj"], use_dora=True),
            b,
            HRPConfig(preheat_steps=1, init="carry_over"),
        ),
        "init='carry_over' with use_dora=True is not supported",
    ),
    (
        "reserved name",
        lambda m, b: hrp_initialize(
            m, LoraConfig(r=2, target_modules=["q_proj"]), b, FAST, adapter_name=PREHEAT_ADAPTER
        ),
        "`adapter_name` must be a non-empty string other than 'hrp_preheat'",
    ),
    (
        "not a LoraConfig",
        lambda m, b: hrp_initialize(m, {"r": 2}, b, FAST),
        "`lora_config` must be a peft.LoraConfig, got dict",
    ),
    (
        "not an HRPConfig",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2), b, {"preheat_steps": 2}),
        "`config` must be an HRPConfig, got dict",
    ),
    (
        "loss_fn not callable",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2), b, FAST, loss_fn="mse"),
        "`loss_fn` must be callable",
    ),
    (
        "zero preheat steps",
        lambda m, b: hrp_initialize(m, LoraConfig(r=2), b, HRPConfig(preheat_steps=0)),
        "`preheat_steps` must be >= 1, got 0",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), BAD, ids=[case for case, _, _ in BAD])
def test_bad_input_fails_clearly_and_leaves_the_model_unchanged(
    case: str, call, message: str, fresh_model, batches
) -> None:
    model = fresh_model()
    state, layout, attributes = _state(model), _structure(model), set(vars(model))
    with pytest.raises(ConfigError, match=message):
        call(model, batches)
    assert _structure(model) == layout
    assert set(vars(model)) == attributes
    current = model.state_dict()
    assert set(current) == set(state) and all(torch.equal(current[k], v) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_a_model_already_holding_the_adapter_is_refused_unchanged(fresh_model, batches) -> None:
    peft_model = get_peft_model(fresh_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    state = _state(peft_model)
    with pytest.raises(ConfigError, match="already holds an adapter named 'default'"):
        hrp_initialize(peft_model, LoraConfig(r=2, target_modules=["v_proj"]), batches, FAST)
    assert list(peft_model.peft_config) == ["default"]
    assert all(torch.equal(peft_model.state_dict()[k], v) for k, v in state.items())

    integrated = inject_adapter_in_model(
        LoraConfig(r=2, target_modules=["q_proj"]), fresh_model()
    )  # no PeftModel
    with pytest.raises(ConfigError, match="already holds an adapter named 'default'"):
        hrp_initialize(integrated, LoraConfig(r=2, target_modules=["v_proj"]), batches, FAST)


def test_nan_on_a_second_adapter_restores_the_peft_model(fresh_model, batches) -> None:
    peft_model = get_peft_model(fresh_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    state, layout = _state(peft_model), _structure(peft_model)
    with pytest.raises(ConfigError, match="not finite"):
        hrp_initialize(
            peft_model,
            LoraConfig(r=2, target_modules=["v_proj"]),
            batches,
            FAST,
            adapter_name="b",
            loss_fn=_nan_loss,
        )
    assert list(peft_model.peft_config) == ["default"] and peft_model.active_adapter == "default"
    assert _structure(peft_model) == layout
    assert all(torch.equal(peft_model.state_dict()[k], v) for k, v in state.items())
