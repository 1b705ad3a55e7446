"""The allowed values of tezo's string settings, as ``Literal`` types (no heavy imports)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ESTIMATES",
    "METHODS",
    "ONE_DIM_MODES",
    "RULES",
    "Estimate",
    "Method",
    "OneDimMode",
    "Rule",
    "method_parts",
]

Method = Literal["mezo_sgd", "mezo_momentum", "mezo_adam", "tezo_sgd", "tezo_momentum", "tezo_adam", "lozo"]
"""A zeroth-order method, ``<family>_<update rule>``; LOZO has the SGD rule only."""
METHODS: tuple[Method, ...] = get_args(Method)

Rule = Literal["sgd", "momentum", "adam"]
"""An update rule applied to the projected gradient."""
RULES: tuple[Rule, ...] = get_args(Rule)

Estimate = Literal["two_sided", "one_sided"]
"""A two-point estimate: κ = (ℓ(θ+ρZ) − ℓ(θ−ρZ))/(2ρ) or κ = (ℓ(θ+ρZ) − ℓ(θ))/ρ."""
ESTIMATES: tuple[Estimate, ...] = get_args(Estimate)

OneDimMode = Literal["dense", "freeze"]
"""What happens to 1-D parameters (biases, norms): a dense Gaussian direction (MeZO's rule) or nothing."""
ONE_DIM_MODES: tuple[OneDimMode, ...] = get_args(OneDimMode)


def method_parts(method: str) -> tuple[str, str]:
    """Split a method name into its direction family and update rule.

    Args:
        method: one of :data:`METHODS`.

    Returns:
        ``(family, rule)``, e.g. ``("tezo", "adam")``; LOZO is ``("lozo", "sgd")``.

    Examples:
        >>> method_parts("tezo_momentum")
        ('tezo', 'momentum')
    """
    if method == "lozo":
        return "lozo", "sgd"
    family, _, rule = method.partition("_")
    return family, rule
