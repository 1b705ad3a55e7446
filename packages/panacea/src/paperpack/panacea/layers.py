"""Per-layer analysis of a perturbation: how much of ε falls on each decoder layer.

The paper reports that Panacea's perturbation reveals "distinct safety coefficients" per layer without a
formula we could confirm; the coefficient here is our reconstruction: the relative perturbation
‖ε_l‖₂ / ‖w_l‖₂ of layer l (ε and w restricted to the perturbed parameters of that layer), reported beside
the layer's share ‖ε_l‖²/‖ε‖² of the perturbation's energy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from paperpack.core.errors import ConfigError
from paperpack.panacea.perturbation import global_norm

__all__ = ["LayerCoefficient", "layer_safety_coefficients"]

# The first dotted path component that is an integer: `model.layers.3.`, `transformer.h.3.`, `blocks.3.`.
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


@dataclass(frozen=True)
class LayerCoefficient:
    """One layer's share of a perturbation.

    Attributes:
        layer: ``"layer <i>"`` for decoder layer i, else the module path (``"model.embed_tokens"``,
            ``"lm_head"``).
        index: the decoder layer index, or None for parameters outside the numbered layers.
        perturbation_norm: ‖ε_l‖₂.
        weight_norm: ‖w_l‖₂ of the same parameters.
        coefficient: ‖ε_l‖₂ / ‖w_l‖₂ (our reconstruction of the paper's per-layer safety coefficient).
        share: ‖ε_l‖₂² / ‖ε‖₂², the fraction of the perturbation's energy on this layer.
    """

    layer: str
    index: int | None
    perturbation_norm: float
    weight_norm: float
    coefficient: float
    share: float


def _group(name: str) -> tuple[str, int | None]:
    match = _LAYER_INDEX.search(name)
    if match is not None:
        return f"layer {match.group(1)}", int(match.group(1))
    return name.rsplit(".", 1)[0] if "." in name else name, None


def layer_safety_coefficients(perturbation: Mapping[str, Tensor], model: nn.Module) -> list[LayerCoefficient]:
    r"""Group ``perturbation`` by layer and report each layer's norms and coefficient.

    Args:
        perturbation: name → ε (e.g. ``trainer.perturbation``).
        model: the model the names refer to (its current weights give ‖w_l‖).

    Returns:
        Numbered layers in order, then the other groups in the order they first appear.

    Raises:
        ConfigError: for an empty perturbation or a name the model does not have.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.panacea import layer_safety_coefficients, random_perturbation
        >>> model, _ = tiny_causal_lm(num_layers=2)
        >>> eps = random_perturbation(model, 1.0, seed=0, parameters=[r"layers\.\d+\.mlp"])
        >>> [row.layer for row in layer_safety_coefficients(eps, model)]
        ['layer 0', 'layer 1']
    """
    if not isinstance(perturbation, Mapping) or not perturbation:
        raise ConfigError("`perturbation` must be a non-empty mapping of parameter names to tensors")
    params = dict(model.named_parameters())
    missing = [name for name in perturbation if name not in params]
    if missing:
        raise ConfigError(f"the model has no parameter {missing[0]!r} named in the perturbation")
    groups: dict[str, tuple[int | None, list[str]]] = {}
    for name in perturbation:
        label, index = _group(name)
        groups.setdefault(label, (index, []))[1].append(name)
    total = global_norm(perturbation.values()) ** 2
    rows = []
    for label, (index, names) in groups.items():
        eps_norm = global_norm(perturbation[name] for name in names)
        weight_norm = global_norm(params[name].detach() for name in names)
        rows.append(
            LayerCoefficient(
                layer=label,
                index=index,
                perturbation_norm=eps_norm,
                weight_norm=weight_norm,
                coefficient=eps_norm / weight_norm if weight_norm > 0 else float("inf"),
                share=eps_norm**2 / total if total > 0 else 0.0,
            )
        )
    numbered = sorted((row for row in rows if row.index is not None), key=lambda row: row.index or 0)
    return numbered + [row for row in rows if row.index is None]
