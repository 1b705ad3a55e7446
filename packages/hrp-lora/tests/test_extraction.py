"""Extraction and init on PEFT models: the vectorized code against the literal per-layer reference."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora import HRPConfig, preheat_directions
from paperpack.hrp_lora._reference import reference_directions, reference_initialize
from paperpack.hrp_lora.adapters import PREHEAT_ADAPTER, lora_layers, preheat_lora_config, set_preheat_scaling
from paperpack.hrp_lora.extraction import initialize_from_adapter

TARGET = LoraConfig(
    r=4,
    lora_alpha=8,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
    rank_pattern={"down_proj": 2},
    alpha_pattern={"v_proj": 3},
    use_rslora=True,
)


def _two_adapters(model: nn.Module, target: LoraConfig, config: HRPConfig, randomize_adapter) -> PeftModel:
    peft_model = get_peft_model(model, copy.deepcopy(target))
    peft_model.add_adapter(PREHEAT_ADAPTER, preheat_lora_config(peft_model.peft_config["default"], config))
    set_preheat_scaling(peft_model, "default", config)
    randomize_adapter(peft_model, PREHEAT_ADAPTER)
    return peft_model


def _assert_matches_reference(model: PeftModel, config: HRPConfig, atol: float = 1e-5) -> None:
    expected = reference_initialize(model, PREHEAT_ADAPTER, "default", config.init, config.scale)
    initialize_from_adapter(model, PREHEAT_ADAPTER, "default", config)
    for name, layer in lora_layers(model, "default").items():
        if "default" in layer.lora_embedding_A:
            A, B = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
        else:
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A_ref, B_ref = expected[name]
        torch.testing.assert_close(A.detach().reshape(A.shape[0], -1).double(), A_ref, rtol=0, atol=atol)
        torch.testing.assert_close(B.detach().reshape(B.shape[0], -1).double(), B_ref, rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("init", "scale", "svd"),
    [
        ("direction", "match_default", "exact"),
        ("direction", "unit", "full"),
        ("direction", "sqrt_sv", "lowrank"),
        ("carry_over", "match_default", "exact"),
        ("carry_over", "match_default", "full"),
    ],
)
def test_vectorized_init_matches_the_literal_reference(
    init, scale, svd, fresh_model, randomize_adapter
) -> None:
    # In float64 the two agree to round-off: the same algorithm, not merely close ones.
    config = HRPConfig(preheat_rank=16, init=init, scale=scale, svd=svd)
    model = _two_adapters(fresh_model().double(), TARGET, config, randomize_adapter)
    _assert_matches_reference(model, config, atol=1e-10)


def test_gpt2_conv1d_layers_match_the_reference(tiny_gpt2, randomize_adapter) -> None:
    target = LoraConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    config = HRPConfig(init="carry_over")
    _assert_matches_reference(
        _two_adapters(copy.deepcopy(tiny_gpt2), target, config, randomize_adapter), config
    )


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.conv = nn.Conv2d(3, 6, 3)
        self.lin = nn.Linear(12, 12)


def test_embedding_and_convolution_layers_match_the_reference(randomize_adapter) -> None:
    torch.manual_seed(0)
    target = LoraConfig(r=3, target_modules=["embed", "conv", "lin"])
    config = HRPConfig(preheat_rank=8, init="carry_over")
    _assert_matches_reference(_two_adapters(_Mixed(), target, config, randomize_adapter), config)


def test_directions_match_the_dense_float64_svd(fresh_model, randomize_adapter) -> None:
    model = _two_adapters(fresh_model(), TARGET, HRPConfig(preheat_rank=16), randomize_adapter)
    expected = reference_directions(model, PREHEAT_ADAPTER)
    found = preheat_directions(model, PREHEAT_ADAPTER)
    assert list(found) == list(expected) and len(found) == 12
    for name, (U, S, Vh) in found.items():
        U_ref, S_ref, Vh_ref = expected[name]
        torch.testing.assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(Vh.double(), Vh_ref, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(U.double(), U_ref, rtol=1e-3, atol=1e-4)


def test_preheat_ranks_follow_rank_pattern_and_scalings_are_recomputed(
    fresh_model, randomize_adapter
) -> None:
    model = _two_adapters(fresh_model(), TARGET, HRPConfig(), randomize_adapter)
    for name, layer in lora_layers(model, "default").items():
        r, R = layer.r["default"], layer.r[PREHEAT_ADAPTER]
        assert 8 * r == R, name
        assert layer.scaling[PREHEAT_ADAPTER] == layer.scaling["default"]
    expected_alpha = {"v_proj": 3}
    for name, layer in lora_layers(model, "default").items():
        alpha = expected_alpha.get(name.rsplit(".", 1)[-1], 8)
        assert layer.scaling["default"] == pytest.approx(alpha / layer.r["default"] ** 0.5), name

    fixed = _two_adapters(
        fresh_model(), TARGET, HRPConfig(preheat_rank=16, preheat_alpha=32), randomize_adapter
    )
    for layer in lora_layers(fixed, PREHEAT_ADAPTER).values():
        assert layer.r[PREHEAT_ADAPTER] == 16
        assert layer.scaling[PREHEAT_ADAPTER] == pytest.approx(32 / 16**0.5)  # rsLoRA: α/√R
        assert layer.lora_alpha[PREHEAT_ADAPTER] == pytest.approx(32)


def test_zero_update_and_unknown_adapter_are_refused(fresh_model) -> None:
    model = get_peft_model(fresh_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter(PREHEAT_ADAPTER, LoraConfig(r=8, target_modules=["q_proj"]))  # B = 0: no update yet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"preheated update of 2 layer\(s\) is zero or not finite"):
        initialize_from_adapter(model, PREHEAT_ADAPTER, "default", HRPConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="holds no LoRA layer of adapter 'other'"):
        preheat_directions(model, "other")
    with pytest.raises(ConfigError, match="`svd` must be one of"):
        preheat_directions(model, "default", svd="dense")


def test_rank_above_the_available_directions_is_refused(randomize_adapter) -> None:
    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(3, 16)), LoraConfig(r=4, target_modules=["0"]))
    model.add_adapter(PREHEAT_ADAPTER, LoraConfig(r=8, target_modules=["0"]))
    randomize_adapter(model, PREHEAT_ADAPTER)
    with pytest.raises(
        ConfigError, match=r"rank r=4 but its preheated update has only 3 singular directions"
    ):
        initialize_from_adapter(model, PREHEAT_ADAPTER, "default", HRPConfig())
