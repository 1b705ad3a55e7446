"""Phase 2 and 3 of HRP on a PEFT model: the SVD of every preheated update, and the rank-r init taken from it.

The SVDs of all layers of one shape are taken in one batched call (:func:`~paperpack.hrp_lora.factored_svd`);
``_reference.py`` holds the literal per-layer version the tests compare against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_literal
from paperpack.hrp_lora.adapters import check_supported, lora_layers, read_factors, write_factors
from paperpack.hrp_lora.config import SVD, HRPConfig
from paperpack.hrp_lora.svd import factored_svd, initial_factors

__all__ = ["initialize_from_adapter", "preheat_directions"]


def preheat_directions(
    model: nn.Module, adapter_name: str, *, svd: SVD = "exact"
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """The SVD of the update ΔW = s·B·A of every LoRA layer of ``adapter_name`` (phase 2 of HRP).

    With ``svd="exact"`` (the default) the m×n product is never formed: each layer costs two thin QR
    factorizations and an R×R SVD, and layers of one shape are processed in one batched call.

    Args:
        model: a ``PeftModel`` (or any module holding PEFT LoRA layers).
        adapter_name: the adapter whose update is decomposed, e.g. a preheated rank-R adapter.
        svd: ``"exact"``, ``"full"`` (dense ``torch.linalg.svd``) or ``"lowrank"`` (dense ``svd_lowrank``).

    Returns:
        Module name -> ``(U, S, Vh)``: U m×k, S k (descending), Vh k×n with k = min(m, n, R), in float32
        (float64 for float64 adapters), on the layer's device, signs canonical (see :func:`factored_svd`).

    Raises:
        ConfigError: when the model holds no LoRA layer of ``adapter_name`` or ``svd`` is unknown.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from paperpack.hrp_lora import preheat_directions
        >>> net = torch.nn.Sequential(torch.nn.Linear(32, 16))
        >>> model = get_peft_model(net, LoraConfig(r=4, target_modules=["0"]))
        >>> U, S, Vh = preheat_directions(model, "default")["base_model.model.0"]
        >>> U.shape, S.shape, Vh.shape
        (torch.Size([16, 4]), torch.Size([4]), torch.Size([4, 32]))
    """
    check_literal("svd", svd, SVD)
    layers = lora_layers(model, adapter_name)
    if not layers:
        raise ConfigError(f"the model holds no LoRA layer of adapter {adapter_name!r}")
    groups: dict[tuple[object, ...], list[str]] = {}
    factors: dict[str, tuple[Tensor, Tensor, float]] = {}
    for name, layer in layers.items():
        check_supported(layer, adapter_name, name, carry_over=False)
        B, A, s = read_factors(layer, adapter_name)
        factors[name] = (B, A, s)
        # The dense methods go one layer at a time: their memory is one m×n matrix, not a stack of them.
        key = (tuple(B.shape), tuple(A.shape), B.dtype, B.device) if svd == "exact" else (name,)
        groups.setdefault(key, []).append(name)
    result: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    with torch.no_grad():
        for names in groups.values():
            B = torch.stack([factors[name][0] for name in names])
            A = torch.stack([factors[name][1] for name in names])
            scaling = torch.tensor([factors[name][2] for name in names], dtype=torch.float64)
            U, S, Vh = factored_svd(B, A, scaling.to(B.device), method=svd)
            for index, name in enumerate(names):
                result[name] = (U[index], S[index], Vh[index])
    return {name: result[name] for name in layers}


def initialize_from_adapter(model: nn.Module, source: str, target: str, config: HRPConfig) -> None:
    """Initialize adapter ``target`` (rank r) from the leading singular directions of adapter ``source``.

    Phase 3 of HRP: per layer, (A, B) <- :func:`initial_factors` of the SVD of the source's update, with the
    target's own rank r and scaling s (rsLoRA included). Both adapters must adapt the same layers.

    Raises:
        ConfigError: when the adapters adapt different layers, a layer's rank r exceeds the number of
            singular directions its source provides (min(m, n, R)), a source update is zero or not finite
            (it has no direction), or a layer is a LoRA variant HRP does not support.
    """
    targets = lora_layers(model, target)
    for name, layer in targets.items():
        check_supported(layer, target, name, carry_over=config.init == "carry_over")
    directions = preheat_directions(model, source, svd=config.svd)
    if set(directions) != set(targets):
        differ = sorted(set(directions) ^ set(targets))
        raise ConfigError(f"adapters {source!r} and {target!r} adapt different layers: {', '.join(differ)}")
    empty = [name for name, (_, S, _) in directions.items() if not bool(torch.isfinite(S).all() and S[0] > 0)]
    if empty:
        raise ConfigError(
            f"the preheated update of {len(empty)} layer(s) is zero or not finite, so it has no direction: "
            f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}; train the preheat longer or with a "
            "larger preheat_lr, or leave these layers out of target_modules"
        )
    initial: dict[str, tuple[Tensor, Tensor]] = {}
    for name, layer in targets.items():
        U, S, Vh = directions[name]
        rank = int(layer.r[target])
        if rank > S.shape[-1]:
            raise ConfigError(
                f"layer {name!r} has rank r={rank} but its preheated update has only {S.shape[-1]} singular "
                f"directions (min(m, n, R) for a {U.shape[0]}×{Vh.shape[-1]} layer at preheat rank "
                f"R={layer.r[source]}); lower r for it (rank_pattern) or raise preheat_rank"
            )
        initial[name] = initial_factors(
            U, S, Vh, rank, float(layer.scaling[target]), init=config.init, scale=config.scale
        )
    for name, layer in targets.items():  # written only once every layer passed its checks
        write_factors(layer, target, *initial[name])
