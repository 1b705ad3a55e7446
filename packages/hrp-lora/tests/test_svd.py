"""The method on plain tensors: factored SVD against the dense SVD, and the initial factors' identities."""

from __future__ import annotations

import math

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora import factored_svd, initial_factors
from paperpack.hrp_lora.svd import DEFAULT_ROW_NORM


def _factors(m: int, n: int, R: int, *batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    B = torch.randn(*batch, m, R, generator=generator, dtype=torch.float64)
    A = torch.randn(*batch, R, n, generator=generator, dtype=torch.float64)
    return B, A


def _principal_angles(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians) between the row spaces of X and Y, from their sines (accurate near 0)."""
    Q_x, _ = torch.linalg.qr(X.double().mT)
    Q_y, _ = torch.linalg.qr(Y.double().mT)
    return torch.arcsin(torch.linalg.svdvals(Q_x - Q_y @ (Q_y.mT @ Q_x)).clamp(max=1.0))


@pytest.mark.parametrize(("m", "n", "R"), [(40, 30, 8), (30, 50, 8), (12, 50, 16), (50, 6, 16), (20, 20, 20)])
@pytest.mark.parametrize("method", ["exact", "full", "lowrank"])
def test_matches_the_dense_svd(m: int, n: int, R: int, method: str) -> None:
    B, A = _factors(m, n, R)
    U, S, Vh = factored_svd(B, A, 0.25, method=method)
    k = min(m, n, R)
    assert U.shape == (m, k) and S.shape == (k,) and Vh.shape == (k, n)
    dense = torch.linalg.svdvals(0.25 * B @ A)[:k]
    torch.testing.assert_close(S, dense, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, 0.25 * B @ A, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(Vh @ Vh.mT, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(U.mT @ U, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-9)


def test_methods_agree_vector_by_vector_in_the_sign_convention() -> None:
    B, A = _factors(64, 48, 12, seed=3)
    exact = factored_svd(B, A, 2.0, method="exact")
    full = factored_svd(B, A, 2.0, method="full")
    for mine, theirs in zip(exact, full, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-9)
    largest = exact[2].gather(-1, exact[2].abs().argmax(-1, keepdim=True))
    assert bool((largest > 0).all())


def test_batched_equals_one_at_a_time_with_one_scaling_each() -> None:
    B, A = _factors(24, 16, 6, 5)
    scaling = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    U, S, Vh = factored_svd(B, A, scaling)
    for i in range(5):
        u, s, vh = factored_svd(B[i], A[i], float(scaling[i]))
        torch.testing.assert_close((U[i], S[i], Vh[i]), (u, s, vh), rtol=1e-10, atol=1e-12)


def test_float32_and_bfloat16_inputs_are_computed_in_float32() -> None:
    B, A = _factors(64, 64, 8)
    U, S, Vh = factored_svd(B.bfloat16(), A.bfloat16(), 1.0)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    reference = torch.linalg.svdvals(B.bfloat16().double() @ A.bfloat16().double())[:8]
    torch.testing.assert_close(S.double(), reference, rtol=1e-5, atol=0)


def test_principal_angles_of_float32_exact_and_dense_are_tiny() -> None:
    B, A = _factors(512, 384, 32, seed=5)
    _, S, Vh = factored_svd(B.float(), A.float(), 1.0)
    _, S_dense, Vh_dense = torch.linalg.svd(B @ A, full_matrices=False)
    torch.testing.assert_close(S.double(), S_dense[:32], rtol=1e-4, atol=0)
    assert float(_principal_angles(Vh[:8], Vh_dense[:8]).max()) < 1e-4


@pytest.mark.parametrize("scale", ["match_default", "unit", "sqrt_sv"])
def test_direction_init_keeps_the_base_and_spans_the_top_r_directions(scale: str) -> None:
    B, A = _factors(30, 20, 8)
    U, S, Vh = factored_svd(B, A, 0.5)
    A_r, B_r = initial_factors(U, S, Vh, 3, 2.0, init="direction", scale=scale)
    assert A_r.shape == (3, 20) and B_r.shape == (30, 3)
    assert not B_r.any()
    assert float(_principal_angles(A_r / A_r.norm(dim=-1, keepdim=True), Vh[:3]).max()) < 1e-6
    norms = A_r.norm(dim=-1)
    expected = {
        "match_default": torch.full((3,), DEFAULT_ROW_NORM, dtype=torch.float64),
        "unit": torch.ones(3, dtype=torch.float64),
        "sqrt_sv": torch.sqrt(S[:3] / 2.0),
    }[scale]
    torch.testing.assert_close(norms, expected)


def test_match_default_is_the_row_norm_of_peft_default_init() -> None:
    weight = torch.empty(2000, 4096)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    assert abs(float(weight.norm(dim=1).mean()) - DEFAULT_ROW_NORM) < 1e-3


def test_carry_over_is_the_eckart_young_truncation_split_evenly() -> None:
    B, A = _factors(30, 20, 8)
    U, S, Vh = factored_svd(B, A, 0.5)
    A_r, B_r = initial_factors(U, S, Vh, 3, 2.0, init="carry_over")
    dense = 0.5 * B @ A
    best = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(2.0 * B_r @ A_r, best)
    error = torch.linalg.matrix_norm(dense - 2.0 * B_r @ A_r) ** 2
    torch.testing.assert_close(error, (S[3:] ** 2).sum())
    torch.testing.assert_close(A_r.norm(dim=-1), B_r.norm(dim=0))


def test_batched_initial_factors() -> None:
    B, A = _factors(10, 12, 4, 3)
    U, S, Vh = factored_svd(B, A, 1.0)
    A_r, B_r = initial_factors(
        U, S, Vh, 2, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), init="carry_over"
    )
    for i, s in enumerate([1.0, 2.0, 3.0]):
        a, b = initial_factors(U[i], S[i], Vh[i], 2, s, init="carry_over")
        torch.testing.assert_close((A_r[i], B_r[i]), (a, b))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda B, A: factored_svd(B, A, method="qr"), "`method` must be one of 'exact', 'full', 'lowrank'"),
        (lambda B, A: factored_svd(B, A.mT), r"share R and their batch shape, got \(10, 4\) and \(12, 4\)"),
        (lambda B, A: initial_factors(*factored_svd(B, A), 5, 1.0), r"`rank` must be in \[1, 4\]"),
        (lambda B, A: initial_factors(*factored_svd(B, A), 2, 1.0, init="both"), "`init` must be one of"),
        (lambda B, A: initial_factors(*factored_svd(B, A), 2, 1.0, scale="big"), "`scale` must be one of"),
    ],
)
def test_bad_arguments(call, message: str) -> None:
    B, A = _factors(10, 12, 4)
    with pytest.raises(ConfigError, match=message):
        call(B, A)
