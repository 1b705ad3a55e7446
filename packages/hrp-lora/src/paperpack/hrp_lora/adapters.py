"""Adapter surgery on PEFT models: find the LoRA layers of an adapter, read and write its factors as matrices.

Every LoRA layer kind is seen as a pair of matrices: B (m×R) and A (R×n) with ΔW = s·B·A. For linear layers
(``nn.Linear``, GPT-2's ``Conv1D``, bitsandbytes layers) they are ``lora_B.weight`` and ``lora_A.weight``;
for convolutions the kernels flattened (A: R×(c_in·k…), B: c_out×R, a 1×1 kernel); for embeddings
``lora_embedding_B`` and ``lora_embedding_A``. Nothing here touches a base weight.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora.config import HRPConfig

__all__ = [
    "PREHEAT_ADAPTER",
    "adapter_parameters",
    "check_supported",
    "describe_targets",
    "lora_layers",
    "preheat_lora_config",
    "read_factors",
    "set_preheat_scaling",
    "unwrap_empty_layers",
    "write_factors",
]

#: Name of the temporary rank-R adapter during the preheat.
PREHEAT_ADAPTER = "hrp_preheat"

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def lora_layers(model: nn.Module, adapter_name: str) -> dict[str, LoraLayer]:
    """The LoRA layers of ``model`` that hold ``adapter_name``, by module name, in model order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
        and (adapter_name in module.lora_A or adapter_name in module.lora_embedding_A)
    }


def _factor_modules(layer: LoraLayer, adapter_name: str, name: str) -> tuple[Tensor, Tensor]:
    if adapter_name in layer.lora_embedding_A:
        return layer.lora_embedding_B[adapter_name], layer.lora_embedding_A[adapter_name]
    lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
    kinds = (nn.Linear, *_CONV)
    if not (isinstance(lora_A, kinds) and isinstance(lora_B, kinds)):
        raise ConfigError(
            f"layer {name!r} holds LoRA factors of type {type(lora_A).__name__}/{type(lora_B).__name__}; HRP "
            "supports linear, convolutional and embedding LoRA layers"
        )
    return lora_B.weight, lora_A.weight


def check_supported(layer: LoraLayer, adapter_name: str, name: str, *, carry_over: bool) -> None:
    """Refuse LoRA variants whose factors are not a plain ΔW = s·B·A (DoRA is plain with B = 0).

    Raises:
        ConfigError: naming the layer and the variant.
    """
    _factor_modules(layer, adapter_name, name)
    variant = layer.lora_variant.get(adapter_name) if hasattr(layer, "lora_variant") else None
    if variant is None:
        return
    kind = type(variant).__name__
    if not kind.startswith("Dora"):
        raise ConfigError(
            f"layer {name!r} uses the LoRA variant {kind}; HRP supports plain LoRA and DoRA (use_dora=True)"
        )
    if carry_over:
        raise ConfigError(
            "init='carry_over' with use_dora=True is not supported: DoRA's magnitude vector is computed from "
            "the initial update, which carry_over makes non-zero; use init='direction'"
        )


def read_factors(layer: LoraLayer, adapter_name: str) -> tuple[Tensor, Tensor, float]:
    """``(B, A, s)`` of one layer: B as m×R, A as R×n (views of the parameters), and the scaling s."""
    B, A = _factor_modules(layer, adapter_name, type(layer).__name__)
    rank = A.shape[0]
    return B.reshape(B.shape[0], -1), A.reshape(rank, -1), float(layer.scaling[adapter_name])


@torch.no_grad()
def write_factors(layer: LoraLayer, adapter_name: str, A: Tensor, B: Tensor) -> None:
    """Copy A (r×n) and B (m×r) into the layer's parameters (reshaped, cast); a LoRA bias of B is zeroed."""
    B_param, A_param = _factor_modules(layer, adapter_name, type(layer).__name__)
    A_param.copy_(A.reshape(A_param.shape).to(A_param.dtype))
    B_param.copy_(B.reshape(B_param.shape).to(B_param.dtype))
    bias = getattr(layer.lora_B[adapter_name], "bias", None) if adapter_name in layer.lora_B else None
    if isinstance(bias, Tensor):
        bias.zero_()


def adapter_parameters(model: nn.Module, adapter_name: str) -> Iterator[tuple[str, nn.Parameter]]:
    """Every parameter of ``adapter_name``: LoRA factors, and its copies of ``modules_to_save`` and tokens."""
    marker = f".{adapter_name}."
    for name, parameter in model.named_parameters():
        if marker in f"{name}.":
            yield name, parameter


def preheat_lora_config(lora_config: LoraConfig, config: HRPConfig) -> LoraConfig:
    """The temporary adapter's config: the target's, at the preheat rank R, with PEFT's standard init.

    Each rank of ``rank_pattern`` maps to its own preheat rank (``preheat_rank`` or 8·r); the scalings are set
    per layer afterwards (:func:`set_preheat_scaling`). ``bias`` is "none": the preheat trains its own
    adapter (and its own copies of ``modules_to_save``), never a base parameter.
    """
    preheat = copy.deepcopy(lora_config)
    preheat.r = config.preheat_rank_for(lora_config.r)
    patterns = lora_config.rank_pattern or {}
    preheat.rank_pattern = {key: config.preheat_rank_for(r) for key, r in patterns.items()}
    preheat.alpha_pattern = {}
    if config.preheat_alpha is not None:  # else the scaling is copied per layer (set_preheat_scaling)
        preheat.lora_alpha = config.preheat_alpha  # type: ignore[assignment]  # PEFT types it int
    preheat.init_lora_weights = True
    preheat.bias = "none"
    preheat.inference_mode = False
    return preheat


def set_preheat_scaling(model: nn.Module, target: str, config: HRPConfig) -> None:
    """Give each preheat layer its scaling: the target's s (``preheat_alpha=None``) or preheat_alpha/R.

    With ``use_rslora`` the scaling of rank R is preheat_alpha/√R. ``lora_alpha`` is kept consistent with it,
    so PEFT's own rescaling (``set_scale``) finds the same value.
    """
    for layer in lora_layers(model, PREHEAT_ADAPTER).values():
        R = layer.r[PREHEAT_ADAPTER]
        root = layer.use_rslora.get(PREHEAT_ADAPTER, False)
        denominator = math.sqrt(R) if root else R
        scaling = (
            float(layer.scaling[target])
            if config.preheat_alpha is None
            else config.preheat_alpha / denominator
        )
        layer.scaling[PREHEAT_ADAPTER] = scaling
        layer.lora_alpha[PREHEAT_ADAPTER] = scaling * denominator


def unwrap_empty_layers(model: nn.Module) -> None:
    """Put the base layer back in place of every LoRA layer that holds no adapter any more.

    PEFT's ``delete_adapter`` keeps the emptied wrappers; removing a just-added adapter this way restores the
    module tree it had before.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        if any(len(getattr(module, attribute)) for attribute in module.adapter_layer_names):
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())


def describe_targets(model: nn.Module, limit: int = 12) -> str:
    """The names (last component) of the linear, convolutional and embedding modules a LoRA could target."""
    kinds: tuple[type[Any], ...] = (nn.Linear, nn.Embedding, *_CONV)
    found: list[str] = []
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        is_conv1d = type(module).__name__ == "Conv1D"  # transformers' GPT-2 layer
        if name and (isinstance(module, kinds) or is_conv1d) and short not in found:
            found.append(short)
    shown = ", ".join(found[:limit]) + (", ..." if len(found) > limit else "")
    return shown or "none"
