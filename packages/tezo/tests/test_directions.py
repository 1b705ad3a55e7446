"""The directions and ZOOptimizer on plain tensors, against the literal reference and known gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.tezo import METHODS, ZOOptimizer, zo_state_bytes
from paperpack.tezo import directions as est
from paperpack.tezo._reference import ReferenceSettings, reference_run
from paperpack.tezo.choices import method_parts
from paperpack.tezo.directions import TemporalLowRankDirection, tezo_factors

# ---------------------------------------------------------------------------------------------------------
# A small nonlinear model: two matrices, a bias and a 3-D tensor (seen as a 2×12 matrix).


def make_params(dtype: torch.dtype = torch.float64) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), (3, 5), (2, 3, 4)]
    return [torch.randn(s, generator=g, dtype=dtype) * 0.5 for s in shapes]


_DATA_G = torch.Generator().manual_seed(1)
X = torch.randn(16, 4, generator=_DATA_G, dtype=torch.float64)
Y = torch.randn(16, 3, generator=_DATA_G, dtype=torch.float64)


def model_loss(params: list[Tensor]) -> Tensor:
    W1, b1, W2, W3 = params
    x, y = X.to(W1.dtype), Y.to(W1.dtype)
    hidden = torch.tanh(x @ W1.T + b1)
    return ((hidden @ W2.T - y) ** 2).mean() + 0.1 * (W3**2).sum() ** 2 / 10


def fast_run(params: list[Tensor], cfg: ReferenceSettings, steps: int, **extra: object) -> list[list[Tensor]]:
    live = [torch.nn.Parameter(p.clone()) for p in params]
    opt = ZOOptimizer(
        live,
        method=cfg.method,
        lr=cfg.lr,
        eps=cfg.eps,
        rank=cfg.rank,
        betas=(cfg.beta1, cfg.beta2),
        seed=cfg.seed,
        adam_eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        scale_by_rank=cfg.scale_by_rank,
        estimate=cfg.estimate,
        one_dim=cfg.one_dim,
        lozo_interval=cfg.lozo_interval,
        **extra,  # type: ignore[arg-type]
    )
    history = []
    for _ in range(steps):
        opt.step(lambda: model_loss(live))
        history.append([p.detach().clone() for p in live])
    return history


def assert_histories_close(
    fast: list[list[Tensor]], ref: list[list[Tensor]], rtol: float, atol: float
) -> None:
    for t, (a_step, b_step) in enumerate(zip(fast, ref, strict=True)):
        for i, (a, b) in enumerate(zip(a_step, b_step, strict=True)):
            torch.testing.assert_close(
                a, b, rtol=rtol, atol=atol, msg=lambda m, t=t, i=i: f"step {t} param {i}: {m}"
            )


LRS = {"sgd": 0.02, "momentum": 0.05, "adam": 0.01}


@pytest.mark.parametrize("method", METHODS)
def test_fast_matches_literal_reference(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny blocks so the dense block walk and the row blocks of TeZO-Adam are exercised.
    monkeypatch.setattr(est, "BLOCK_NUMEL", 7)
    rule = method_parts(method)[1]
    cfg = ReferenceSettings(method=method, lr=LRS[rule], eps=1e-3, rank=3, seed=11, lozo_interval=4)
    ref = reference_run(make_params(), model_loss, cfg, steps=10)
    fast = fast_run(make_params(), cfg, steps=10)
    assert_histories_close(fast, ref, rtol=1e-6, atol=1e-9)
    assert not torch.equal(ref[-1][0], make_params()[0]), "the reference did not move"


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("tezo_adam", {"weight_decay": 0.1, "scale_by_rank": True}),
        ("tezo_momentum", {"estimate": "one_sided", "one_dim": "freeze"}),
        ("mezo_adam", {"weight_decay": 0.05, "estimate": "one_sided"}),
        ("lozo", {"scale_by_rank": True, "one_dim": "freeze", "weight_decay": 0.1}),
        ("tezo_sgd", {"rank": 7}),  # rank above min(m, n)
    ],
)
def test_fast_matches_reference_with_options(method: str, overrides: dict[str, object]) -> None:
    rule = method_parts(method)[1]
    cfg = ReferenceSettings(method=method, lr=LRS[rule], eps=1e-3, rank=3, seed=5, lozo_interval=3)
    cfg = ReferenceSettings(**{**cfg.__dict__, **overrides})  # type: ignore[arg-type]
    ref = reference_run(make_params(), model_loss, cfg, steps=8)
    fast = fast_run(make_params(), cfg, steps=8)
    assert_histories_close(fast, ref, rtol=1e-6, atol=1e-9)
    if cfg.one_dim == "freeze":
        assert torch.equal(fast[-1][1], make_params()[1])


@pytest.mark.parametrize("method", ["tezo_adam", "lozo"])
def test_regenerated_factors_match_cached(method: str) -> None:
    cfg = ReferenceSettings(method=method, lr=0.01, eps=1e-3, rank=3, seed=2, lozo_interval=3)
    cached = fast_run(make_params(), cfg, steps=7, cache_factors=True)
    regenerated = fast_run(make_params(), cfg, steps=7, cache_factors=False)
    assert_histories_close(regenerated, cached, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The estimate on a quadratic with a known gradient.


def _quadratic() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    A = torch.rand(6, 5, generator=g, dtype=torch.float64) + 0.5
    W_star = torch.randn(6, 5, generator=g, dtype=torch.float64)
    W0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    return A, W_star, W0


def mean_estimate(method: str, samples: int, **options: object) -> tuple[Tensor, Tensor]:
    """Mean of κ·Z_t over fresh directions (a fresh seed draws fresh U, V, τ), and the true gradient."""
    A, W_star, W0 = _quadratic()
    gradient = A * (W0 - W_star)  # ∇ of ½‖√A ⊙ (W − W*)‖²
    total = torch.zeros_like(W0)
    for seed in range(samples):
        W = torch.nn.Parameter(W0.clone())
        opt = ZOOptimizer([W], method=method, lr=1.0, eps=1e-2, seed=seed, **options)  # type: ignore[arg-type]
        opt.step(lambda W=W: 0.5 * (A * (W - W_star) ** 2).sum())
        total += W0 - W.detach()  # SGD with η = 1: θ_0 − θ_1 = κ·Z_t
    return total / samples, gradient


@pytest.mark.parametrize(
    ("method", "options", "factor"),
    [
        ("mezo_sgd", {}, 1.0),
        ("tezo_sgd", {"rank": 4}, 4.0),
        ("tezo_sgd", {"rank": 4, "scale_by_rank": True}, 1.0),
        ("lozo", {"rank": 3}, 3.0),
        ("lozo", {"rank": 3, "scale_by_rank": True}, 1.0),
    ],
)
def test_mean_estimate_matches_gradient(method: str, options: dict[str, object], factor: float) -> None:
    samples = 2000
    mean, gradient = mean_estimate(method, samples, **options)
    # Central differences are exact on a quadratic, so only Monte-Carlo error remains. Its size per element is
    # at most about factor·‖∇f‖·sqrt(3·(d + 2)/N) (Gaussian fourth moments), d = 30.
    expected = factor * gradient
    tolerance = factor * gradient.norm() * math.sqrt(3 * 32 / samples)
    assert (mean - expected).norm() < tolerance
    # The projection onto ∇f is far less noisy: it separates factor r from factor 1 sharply.
    ratio = float((mean * gradient).sum() / gradient.norm() ** 2)
    assert ratio == pytest.approx(factor, rel=0.2)


def test_kappa_matches_autograd_directional_derivative() -> None:
    """ρ → 0: κ = (ℓ⁺ − ℓ⁻)/(2ρ) approaches ⟨∇ℓ, Z_t⟩ computed by autograd."""
    params = [torch.nn.Parameter(p) for p in make_params()]
    loss = model_loss(list(params))
    grads = torch.autograd.grad(loss, params)
    opt = ZOOptimizer(params, method="tezo_sgd", lr=0.0, eps=1e-6, rank=3, seed=4)
    opt.step(lambda: model_loss(list(params)))
    directional = 0.0
    for param, grad in zip(params, grads, strict=True):
        blocks = opt.direction(param).deltas(param, opt.state[param], 0, 1.0)
        Z = torch.cat([delta for _, _, delta in blocks]).view(param.shape)
        directional += float((grad * Z).sum())
    assert opt.last_kappa == pytest.approx(directional, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Perturb / restore, subspace invariant, determinism, state bytes.


@pytest.mark.parametrize("method", METHODS)
def test_perturb_and_restore_round_trip_float32(method: str) -> None:
    params = [torch.nn.Parameter(p) for p in make_params(torch.float32)]
    start = [p.detach().clone() for p in params]
    opt = ZOOptimizer(params, method=method, lr=0.0, eps=1e-3, rank=3, lozo_interval=5)
    for _ in range(200):
        opt.step(lambda: model_loss(list(params)))
    for p, p0 in zip(params, start, strict=True):
        torch.testing.assert_close(p.detach(), p0, rtol=0, atol=1e-5)


def _span_residual(delta: Tensor, U: Tensor, V: Tensor) -> float:
    """Relative least-squares residual of ΔW against span{u_s v_sᵀ}."""
    basis = torch.stack([torch.outer(U[:, s], V[:, s]).reshape(-1) for s in range(U.shape[1])], dim=1)
    coefficients = torch.linalg.lstsq(basis, delta.reshape(-1, 1)).solution
    return float((basis @ coefficients - delta.reshape(-1, 1)).norm() / delta.norm())


@pytest.mark.parametrize("method", ["tezo_sgd", "tezo_momentum", "tezo_adam"])
@pytest.mark.parametrize("cache_factors", [True, False])
def test_subspace_invariant(method: str, cache_factors: bool) -> None:
    """θ_T − θ_0 = U diag(c) Vᵀ: the whole run moves each matrix along r fixed rank-1 directions.

    TeZO-Adam's separable preconditioner divides elementwise, so its update leaves the span (by design of the
    paper's Eq. 8 as read by the paper note); the test pins that too.
    """
    params = [torch.nn.Parameter(p) for p in make_params()]
    start = [p.detach().clone() for p in params]
    opt = ZOOptimizer(params, method=method, lr=0.02, eps=1e-3, rank=3, cache_factors=cache_factors, seed=9)
    for _ in range(25):
        opt.step(lambda: model_loss(list(params)))
    for index, (param, p0) in enumerate(zip(params, start, strict=True)):
        if param.ndim < 2:
            continue
        rows, cols = param.shape[0], param.numel() // param.shape[0]
        U, V = tezo_factors(rows, cols, 3, 9, index, device=param.device, dtype=param.dtype)
        residual = _span_residual((param.detach() - p0).reshape(rows, cols), U, V)
        if method == "tezo_adam":
            assert residual > 1e-3
        else:
            assert residual < 1e-10


def test_seed_replay_and_state_dict_resume() -> None:
    cfg = ReferenceSettings(method="tezo_adam", lr=0.01, eps=1e-3, rank=3, seed=21)
    full = fast_run(make_params(), cfg, steps=8)
    assert_histories_close(fast_run(make_params(), cfg, steps=8), full, rtol=0, atol=0)

    params = [torch.nn.Parameter(p) for p in make_params()]
    opt = ZOOptimizer(params, method="tezo_adam", lr=0.01, eps=1e-3, rank=3, seed=21)
    for _ in range(3):
        opt.step(lambda: model_loss(list(params)))
    saved_params = [p.detach().clone() for p in params]
    saved_state = opt.state_dict()
    torch.save(saved_state, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    resumed = [torch.nn.Parameter(p) for p in saved_params]
    opt2 = ZOOptimizer(resumed, method="tezo_adam", lr=0.01, eps=1e-3, rank=3, seed=21)
    opt2.load_state_dict(loaded)
    for _ in range(5):
        opt2.step(lambda: model_loss(list(resumed)))
    for a, b in zip(resumed, full[-1], strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def _shapes_model() -> list[torch.nn.Parameter]:
    shapes = [(64, 32), (32,), (16, 64), (48, 16), (8, 2, 4)]
    return [torch.nn.Parameter(torch.zeros(s)) for s in shapes]


@pytest.mark.parametrize("cache_factors", [True, False])
def test_state_bytes_match_memory_formula(cache_factors: bool) -> None:
    """The paper note's formula: MeZO-m / -Adam P / 2P; TeZO Σ(m+n)r (cached) + Σr / 2Σr; LOZO Σ n·r."""
    params = _shapes_model()
    r = 4
    matrices = [(p.shape[0], p.numel() // p.shape[0]) for p in params if p.ndim >= 2]
    P = sum(p.numel() for p in params)
    p_1d = sum(p.numel() for p in params if p.ndim < 2)
    factors = sum((m + n) * r for m, n in matrices) if cache_factors else 0
    lozo_v = sum(n * r for _, n in matrices) if cache_factors else 0
    r_sum = r * len(matrices)
    expected = {
        "mezo_sgd": 0,
        "mezo_momentum": P,
        "mezo_adam": 2 * P,
        "tezo_sgd": factors,
        "tezo_momentum": factors + r_sum + p_1d,
        "tezo_adam": factors + 2 * r_sum + 2 * p_1d,
        "lozo": lozo_v,
    }
    for method, numbers in expected.items():
        opt = ZOOptimizer(params, method=method, rank=r, cache_factors=cache_factors)
        assert zo_state_bytes(opt) == 4 * numbers, method
    # Without 1-D parameters the ratio is the note's (Σ(m+n)r + 2Σr) / 2P.
    matrices_only = [p for p in _shapes_model() if p.ndim >= 2]
    tezo = zo_state_bytes(ZOOptimizer(matrices_only, method="tezo_adam", rank=r))
    mezo = zo_state_bytes(ZOOptimizer(matrices_only, method="mezo_adam", rank=r))
    P2 = sum(p.numel() for p in matrices_only)
    assert tezo / mezo == pytest.approx((sum((m + n) * r for m, n in matrices) + 2 * r_sum) / (2 * P2))


def test_tezo_moments_stay_float32_for_bfloat16_weights() -> None:
    W = torch.nn.Parameter(torch.zeros(8, 6, dtype=torch.bfloat16))
    opt = ZOOptimizer([W], method="tezo_adam", rank=2)
    state = opt.state[W]
    assert state["U"].dtype == torch.bfloat16
    assert state["exp_avg"].dtype == torch.float32
    opt.step(lambda: (W.float() - 1).pow(2).sum())
    assert isinstance(opt.direction(W), TemporalLowRankDirection)


def test_non_finite_kappa_skips_the_update() -> None:
    W = torch.nn.Parameter(torch.ones(4, 3))
    opt = ZOOptimizer([W], method="tezo_sgd", lr=0.1, rank=2)
    opt.step(lambda: torch.tensor(float("nan")))
    torch.testing.assert_close(W.detach(), torch.ones(4, 3), rtol=0, atol=1e-6)
    assert (opt.zo_step, opt.zo_updates, opt.zo_skipped) == (1, 0, 1)


def test_gradient_accumulation_sums_kappa() -> None:
    """Two half-batch estimates (losses scaled by 1/2) give the κ of the full batch."""
    params = [torch.nn.Parameter(p) for p in make_params()]
    opt = ZOOptimizer(params, method="mezo_adam", lr=0.01, seed=3)
    opt.step(lambda: model_loss(list(params)))
    full_kappa = opt.last_kappa

    params2 = [torch.nn.Parameter(p) for p in make_params()]
    opt2 = ZOOptimizer(params2, method="mezo_adam", lr=0.01, seed=3)

    def half_loss(rows: slice) -> Tensor:
        W1, b1, W2, W3 = params2
        hidden = torch.tanh(X[rows] @ W1.T + b1)
        return 0.5 * (((hidden @ W2.T - Y[rows]) ** 2).mean() + 0.1 * (W3**2).sum() ** 2 / 10)

    opt2.estimate(lambda: half_loss(slice(0, 8)))
    opt2.estimate(lambda: half_loss(slice(8, 16)))
    opt2.step()
    assert opt2.last_kappa == pytest.approx(full_kappa, rel=1e-9)
    for a, b in zip(params, params2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "`rank` must be >= 1, got 0"),
        ({"eps": 0.0}, "`eps` must be > 0, got 0.0"),
        ({"eps": -1e-3}, "`eps` must be > 0"),
        ({"method": "mezo_lion"}, "`method` must be one of 'mezo_sgd'"),
        ({"lr": -1.0}, "`lr` must be >= 0"),
        ({"betas": (0.9, 1.0)}, "`betas[1]` must be in [0, 1)"),
        ({"betas": (0.9,)}, "`betas` must be a pair"),
        ({"estimate": "three_sided"}, "`estimate` must be one of 'two_sided', 'one_sided'"),
        ({"one_dim": "lowrank"}, "`one_dim` must be one of 'dense', 'freeze'"),
        ({"lozo_interval": 0}, "`lozo_interval` must be >= 1"),
        ({"cache_factors": "yes"}, "`cache_factors` must be true or false, got 'yes' (str)"),
        ({"seed": -1}, "`seed` must be >= 0"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], message: str) -> None:
    W = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        ZOOptimizer([W], **kwargs)  # type: ignore[arg-type]


def test_bad_params_and_closures() -> None:
    with pytest.raises(ConfigError, match="empty"):
        ZOOptimizer([])
    with pytest.raises(ConfigError, match="every parameter is 1-D and frozen"):
        ZOOptimizer([torch.nn.Parameter(torch.zeros(3))], one_dim="freeze")
    with pytest.raises(ConfigError, match="`method` must be the same for every parameter group"):
        ZOOptimizer([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "method": "mezo_sgd"}])
    W = torch.nn.Parameter(torch.zeros(3, 3))
    opt = ZOOptimizer([W])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError, match="scalar loss"):
        opt.step(lambda: W.sum(dim=0))
    with pytest.raises(TypeError, match="got str"):
        opt.step(lambda: "1.0")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="expected a ZOOptimizer"):
        zo_state_bytes(torch.optim.SGD([W], lr=0.1))


def test_load_state_dict_rejects_mismatched_state() -> None:
    W = torch.nn.Parameter(torch.zeros(4, 3))
    state = ZOOptimizer([W], method="tezo_adam", rank=2).state_dict()
    with pytest.raises(
        CheckpointError, match="saved with `method`='tezo_adam', this optimizer has 'mezo_adam'"
    ):
        ZOOptimizer([W], method="mezo_adam").load_state_dict(state)
    with pytest.raises(CheckpointError, match="saved with `rank`=2, this optimizer has 3"):
        ZOOptimizer([W], method="tezo_adam", rank=3).load_state_dict(state)
    other = torch.nn.Parameter(torch.zeros(5, 3))
    with pytest.raises(CheckpointError, match="has shape"):
        ZOOptimizer([other], method="tezo_adam", rank=2).load_state_dict(state)
    with pytest.raises(CheckpointError, match="must be a dict"):
        ZOOptimizer([W], method="tezo_adam", rank=2).load_state_dict({"state": {}})
