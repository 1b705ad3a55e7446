r"""The accuracy-efficiency score (AES) the paper reports beside accuracy and length.

With ΔL = (L_base − L) / L_base and ΔAcc = (Acc − Acc_base) / Acc_base:

    AES = α·ΔL + β·|ΔAcc|   if ΔAcc >= 0,
    AES = α·ΔL − γ·|ΔAcc|   if ΔAcc < 0   (the formula as written; α = 1, β = 3, γ = 5).

The paper's table cells match α·ΔL + β·|ΔAcc| for drops too (Marco-o1, GSM8K, Fast-solving Prompt:
ΔL = 0.157, ΔAcc = −0.084, reported 0.41 = 0.157 + 3·0.084, where the formula gives −0.26):
``sign_agnostic=True`` computes that variant.
"""

from __future__ import annotations

import math

from paperpack.core.errors import ConfigError

__all__ = ["aes"]


def aes(
    acc: float,
    length: float,
    acc_base: float,
    length_base: float,
    *,
    alpha: float = 1.0,
    beta: float = 3.0,
    gamma: float = 5.0,
    sign_agnostic: bool = False,
) -> float:
    """The accuracy-efficiency score of a model (``acc``, ``length``) against a baseline.

    Args:
        acc: accuracy (any unit, the same as ``acc_base``: a fraction or a percentage).
        length: mean length (tokens).
        acc_base: the baseline's accuracy (> 0).
        length_base: the baseline's mean length (> 0).
        alpha: α, the weight of the length reduction ΔL. Default 1 (the paper).
        beta: β, the weight of an accuracy gain. Default 3 (the paper; its table confirms it).
        gamma: γ, the weight of an accuracy drop. Default 5 (the paper's text; the table does not use it).
        sign_agnostic: use β·|ΔAcc| for drops as well, as the paper's table does.

    Raises:
        ConfigError: for a non-finite value, a baseline accuracy or length <= 0, or a negative weight.

    Examples:
        >>> from paperpack.o1_pruner import aes
        >>> round(aes(81.7, 447, 89.2, 530, sign_agnostic=True), 2)  # the paper's table cell
        0.41
        >>> round(aes(81.7, 447, 89.2, 530), 2)  # the formula as written
        -0.26
    """
    for name, value in {"acc": acc, "length": length, "alpha": alpha, "beta": beta, "gamma": gamma}.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
    for name, value in {"alpha": alpha, "beta": beta, "gamma": gamma}.items():
        if value < 0:
            raise ConfigError(f"`{name}` must be >= 0, got {value!r}")
    for name, value in {"acc_base": acc_base, "length_base": length_base}.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (value > 0 and math.isfinite(value))
        ):
            raise ConfigError(f"`{name}` must be a finite number > 0, got {value!r}")
    delta_length = (length_base - length) / length_base
    delta_acc = (acc - acc_base) / acc_base
    if delta_acc >= 0 or sign_agnostic:
        return alpha * delta_length + beta * abs(delta_acc)
    return alpha * delta_length - gamma * abs(delta_acc)
