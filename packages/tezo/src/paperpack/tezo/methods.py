"""The names of the zeroth-order methods and update rules (no heavy imports: the CLI reads them)."""

from __future__ import annotations

__all__ = ["ESTIMATES", "METHODS", "ONE_DIM_MODES", "RULES", "method_parts"]

METHODS: tuple[str, ...] = (
    "mezo_sgd",
    "mezo_momentum",
    "mezo_adam",
    "tezo_sgd",
    "tezo_momentum",
    "tezo_adam",
    "lozo",
)
"""The zeroth-order methods, ``<family>_<update rule>``; LOZO has the SGD rule only."""

RULES: tuple[str, ...] = ("sgd", "momentum", "adam")
"""The update rules applied to the projected gradient."""


ESTIMATES: tuple[str, ...] = ("two_sided", "one_sided")
"""Two-point estimates: κ = (ℓ(θ+ρZ) − ℓ(θ−ρZ))/(2ρ) or κ = (ℓ(θ+ρZ) − ℓ(θ))/ρ."""

ONE_DIM_MODES: tuple[str, ...] = ("dense", "freeze")
"""1-D parameters (biases, norms): perturbed with a dense Gaussian (MeZO's rule) or left untouched."""


def method_parts(method: str) -> tuple[str, str]:
    """Split a method name into its direction family and update rule.

    Args:
        method: one of :data:`METHODS`.

    Returns:
        ``(family, rule)``, e.g. ``("tezo", "adam")``; LOZO is ``("lozo", "sgd")``.

    Example:
        >>> method_parts("tezo_momentum")
        ('tezo', 'momentum')
    """
    if method == "lozo":
        return "lozo", "sgd"
    family, _, rule = method.partition("_")
    return family, rule
