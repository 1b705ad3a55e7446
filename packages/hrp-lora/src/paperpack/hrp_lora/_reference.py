"""A slow, literal reference of HRP's extraction and initialization, one layer at a time, in float64.

Written in the paper's notation (W = W0 + B·Aᵀ, A ∈ R^{n×R}, B ∈ R^{m×R}) and from its words: form the
preheated update, take its full SVD, keep the leading r singular directions. The fast code
(:mod:`paperpack.hrp_lora.extraction`, :mod:`paperpack.hrp_lora.svd`) batches layers and never forms the
m×n matrix; the tests check that the two agree.
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

__all__ = ["reference_directions", "reference_initialize", "reference_layer_init"]


def _sign_convention(U: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor]:
    """Make the largest-magnitude entry of each right singular vector positive, one vector at a time."""
    U, Vh = U.clone(), Vh.clone()
    for i in range(Vh.shape[0]):
        j = int(torch.argmax(torch.abs(Vh[i])))
        if Vh[i, j] < 0:
            Vh[i] = -Vh[i]
            U[:, i] = -U[:, i]
    return U, Vh


def reference_layer_init(
    B_pre: Tensor, A_pre_paper: Tensor, s_pre: float, r: int, s_r: float, *, init: str, scale: str
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One layer: the paper's update ΔW = s·B·Aᵀ, its SVD, and the rank-r factors in PEFT's layout.

    Args:
        B_pre: m×R, the preheated B.
        A_pre_paper: n×R, the preheated A in the paper's layout (PEFT's ``lora_A.weight`` transposed).
        s_pre: the preheat adapter's scaling.
        r: the target rank.
        s_r: the target adapter's scaling.
        init: "direction" or "carry_over".
        scale: "match_default", "unit" or "sqrt_sv".

    Returns:
        ``(lora_A.weight (r×n), lora_B.weight (m×r), (U, S, Vh))`` with the SVD truncated to min(m, n, R).
    """
    B_pre, A_pre_paper = B_pre.double(), A_pre_paper.double()
    delta = s_pre * (B_pre @ A_pre_paper.T)  # the preheated update, m×n, formed densely
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(delta.shape[0], delta.shape[1], B_pre.shape[1])
    U, S, Vh = U[:, :k], S[:k], Vh[:k]
    U, Vh = _sign_convention(U, Vh)
    A = torch.zeros(r, Vh.shape[1], dtype=torch.float64)
    B = torch.zeros(U.shape[0], r, dtype=torch.float64)
    for i in range(r):
        root = math.sqrt(float(S[i]) / s_r)
        if init == "carry_over":
            A[i] = root * Vh[i]
            B[:, i] = root * U[:, i]
        elif scale == "match_default":
            A[i] = Vh[i] / math.sqrt(3.0)  # the expected row norm of kaiming_uniform(a=√5): √(n · 1/(3n))
        elif scale == "unit":
            A[i] = Vh[i]
        else:
            A[i] = root * Vh[i]
    return A, B, (U, S, Vh)


def _matrices(layer: LoraLayer, adapter: str) -> tuple[Tensor, Tensor]:
    if adapter in layer.lora_embedding_A:
        B, A = layer.lora_embedding_B[adapter], layer.lora_embedding_A[adapter]
    else:
        B, A = layer.lora_B[adapter].weight, layer.lora_A[adapter].weight
    return B.detach().reshape(B.shape[0], -1), A.detach().reshape(A.shape[0], -1)


def reference_directions(model: nn.Module, adapter: str) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """The dense float64 SVD of every layer's update of ``adapter``, one layer at a time."""
    result = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and (adapter in layer.lora_A or adapter in layer.lora_embedding_A):
            B, A = _matrices(layer, adapter)
            _, _, svd = reference_layer_init(
                B, A.T, float(layer.scaling[adapter]), 1, 1.0, init="direction", scale="unit"
            )
            result[name] = svd
    return result


def reference_initialize(
    model: nn.Module, source: str, target: str, init: str, scale: str
) -> dict[str, tuple[Tensor, Tensor]]:
    """The rank-r factors ``(lora_A.weight, lora_B.weight)`` (as matrices) each target layer would get."""
    result = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and (target in layer.lora_A or target in layer.lora_embedding_A):
            B, A = _matrices(layer, source)
            A_r, B_r, _ = reference_layer_init(
                B,
                A.T,
                float(layer.scaling[source]),
                int(layer.r[target]),
                float(layer.scaling[target]),
                init=init,
                scale=scale,
            )
            result[name] = (A_r, B_r)
    return result
