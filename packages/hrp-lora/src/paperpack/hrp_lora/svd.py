"""The method on plain tensors: the SVD of a preheated update s·B·A, and the rank-r factors taken from it.

Shapes follow PEFT: ``B`` is m×R (``lora_B.weight``), ``A`` is R×n (``lora_A.weight``), the update is
ΔW = s·B·A (the paper's B·Aᵀ with its A ∈ R^{n×R}). Every function accepts a batch of layers of one shape in
leading dimensions, so the extraction of many layers is a handful of batched calls.

Singular vectors are defined up to a sign; every method here returns them in one convention (the entry of
largest magnitude of each row of Vh is positive, U's column flipped with it), so "exact", "full" and
"lowrank" agree, and so do the ranks of a distributed run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_literal
from paperpack.hrp_lora.config import SVD, Init, Scale

__all__ = ["DEFAULT_ROW_NORM", "factored_svd", "initial_factors"]

#: Expected row norm of PEFT's default A (kaiming-uniform, a=√5: entries U(±1/√n), so E‖row‖² = 1/3).
DEFAULT_ROW_NORM = 1.0 / math.sqrt(3.0)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _canonical_signs(U: Tensor, S: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flip each singular pair so that the largest-magnitude entry of its right vector is positive."""
    index = Vh.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(Vh, -1, index))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs.mT, S, Vh * signs


def _as_scaling(scaling: float | Tensor, like: Tensor) -> Tensor:
    value = torch.as_tensor(scaling, dtype=like.dtype, device=like.device)
    return value.reshape(*value.shape, 1, 1)


def factored_svd(
    B: Tensor, A: Tensor, scaling: float | Tensor = 1.0, *, method: SVD = "exact"
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of the product D = s·B·A: ``U`` (m×k), ``S`` (k), ``Vh`` (k×n), k = min(m, n, R).

    ``"exact"`` never forms the m×n matrix: with reduced QR factorizations B = Q_B·R_B and Aᵀ = Q_A·R_A,
    D = Q_B·(s·R_B·R_Aᵀ)·Q_Aᵀ, so the SVD U_c·S·V_cᵀ of the small core s·R_B·R_Aᵀ (taken in float64)
    gives U = Q_B·U_c and Vh = V_cᵀ·Q_Aᵀ, in O((m + n)·R²) time. ``"full"`` is ``torch.linalg.svd`` of the
    dense D and ``"lowrank"`` ``torch.svd_lowrank`` of it (q = k, two power iterations); both exist for
    comparison.

    Args:
        B: m×R, or a batch (..., m, R).
        A: R×n, or a batch (..., R, n).
        scaling: s, a number or one per matrix of the batch.
        method: ``"exact"``, ``"full"`` or ``"lowrank"``.

    Returns:
        ``(U, S, Vh)`` in float32 (float64 if an input is), singular values descending, signs canonical.

    Examples:
        >>> import torch
        >>> from paperpack.hrp_lora import factored_svd
        >>> B, A = torch.randn(300, 8, dtype=torch.float64), torch.randn(8, 200, dtype=torch.float64)
        >>> U, S, Vh = factored_svd(B, A, 0.5)
        >>> U.shape, S.shape, Vh.shape
        (torch.Size([300, 8]), torch.Size([8]), torch.Size([8, 200]))
        >>> torch.allclose(U @ torch.diag(S) @ Vh, 0.5 * B @ A)
        True
    """
    check_literal("method", method, SVD)
    if B.ndim < 2 or A.ndim < 2 or B.shape[-1] != A.shape[-2] or B.shape[:-2] != A.shape[:-2]:
        raise ConfigError(
            f"`B` (m×R) and `A` (R×n) must share R and their batch shape, got {tuple(B.shape)} and "
            f"{tuple(A.shape)}"
        )
    dtype = _compute_dtype(B, A)
    B, A = B.to(dtype), A.to(dtype)
    s = _as_scaling(scaling, B)
    k = min(B.shape[-2], A.shape[-1], B.shape[-1])
    if method == "exact":
        Q_B, R_B = torch.linalg.qr(B)
        Q_A, R_A = torch.linalg.qr(A.mT)
        # The core is R×R: its SVD in float64 costs nothing and keeps the small singular values accurate.
        core = torch.float32 if B.device.type == "mps" else torch.float64
        U_c, S, V_ch = torch.linalg.svd(s.to(core) * (R_B.to(core) @ R_A.to(core).mT), full_matrices=False)
        U, S, Vh = Q_B @ U_c.to(dtype), S.to(dtype), V_ch.to(dtype) @ Q_A.mT
    elif method == "full":
        U, S, Vh = torch.linalg.svd(s * (B @ A), full_matrices=False)
    else:
        U, S, V = torch.svd_lowrank(s * (B @ A), q=k, niter=2)
        Vh = V.mT
    return _canonical_signs(U[..., :k], S[..., :k], Vh[..., :k, :])


def initial_factors(
    U: Tensor,
    S: Tensor,
    Vh: Tensor,
    rank: int,
    scaling: float | Tensor,
    *,
    init: Init = "direction",
    scale: Scale = "match_default",
) -> tuple[Tensor, Tensor]:
    """The rank-r factors ``(A, B)`` (r×n and m×r) initialized from the SVD of a preheated update.

    - ``init="direction"``: A ← c·Vh[:r], B ← 0, so s·B·A = 0 and the model equals its base at step 0. The row
      scale c is 1/√3 (``"match_default"``: the expected row norm of PEFT's default A), 1 (``"unit"``) or
      √(S_i/s) (``"sqrt_sv"``).
    - ``init="carry_over"``: A ← √(S/s)·Vh[:r], B ← U[:, :r]·√(S/s), so s·B·A = U_r·S_r·Vh_r, the best rank-r
      approximation of the preheated update (Eckart-Young).

    Args:
        U: left singular vectors, m×k (or batched), as :func:`factored_svd` returns them.
        S: singular values, k, descending.
        Vh: right singular vectors, k×n.
        rank: r, at most the number of singular triplets.
        scaling: s of the rank-r adapter (α/r, or α/√r with rsLoRA), a number or one per matrix.
        init: ``"direction"`` or ``"carry_over"``.
        scale: ``"match_default"``, ``"unit"`` or ``"sqrt_sv"`` (``init="direction"`` only).

    Returns:
        ``(A, B)`` in the dtype of ``Vh``.
    """
    check_literal("init", init, Init)
    check_literal("scale", scale, Scale)
    if not 1 <= rank <= S.shape[-1]:
        raise ConfigError(f"`rank` must be in [1, {S.shape[-1]}] (the singular triplets given), got {rank}")
    s = torch.as_tensor(scaling, dtype=S.dtype, device=S.device).expand(S.shape[:-1]).unsqueeze(-1)
    root = torch.sqrt(S[..., :rank] / s)
    V_r = Vh[..., :rank, :]
    if init == "carry_over":
        return root.unsqueeze(-1) * V_r, U[..., :, :rank] * root.unsqueeze(-2)
    if scale == "sqrt_sv":
        A = root.unsqueeze(-1) * V_r
    elif scale == "unit":
        A = V_r.clone()
    else:
        A = DEFAULT_ROW_NORM * V_r
    B = torch.zeros(*U.shape[:-1], rank, dtype=U.dtype, device=U.device)
    return A, B
