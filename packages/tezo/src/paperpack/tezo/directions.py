"""Zeroth-order perturbation directions on plain tensors: MeZO, TeZO and LOZO.

A two-point (SPSA) zeroth-order step evaluates the loss at θ + ρZ_t and θ − ρZ_t and uses the projected
gradient κ = (ℓ⁺ − ℓ⁻) / (2ρ) in place of ⟨∇ℓ, Z_t⟩. The three methods differ only in the random direction
Z_t of each parameter and in the state their update rules keep:

- MeZO (Malladi et al., 2023): dense Z_t ~ N(0, I) of the parameter's shape, redrawn every step.
- TeZO (Sun et al., 2025, arXiv:2501.19057): for a weight matrix W ∈ R^{m×n}, the stack of perturbations over
  time is a rank-r CP decomposition, so Z_t = U diag(τ_t) Vᵀ with U ∈ R^{m×r}, V ∈ R^{n×r} drawn once for the
  whole run and only τ_t ∈ R^r drawn per step. Momentum and Adam keep r-vectors per matrix.
- LOZO (Chen et al., 2024): Z_t = U_t Vᵀ with U_t ∈ R^{m×r} redrawn every step and V ∈ R^{n×r} redrawn
  every ν steps ("lazy" sampling).

Every random draw is regenerated from an integer seed instead of being stored (MeZO's seed trick): a draw's
seed is a hash of the optimizer's seed, a domain tag, the step t, the parameter's index and a block index.
Perturbing and updating therefore see bitwise the same Z_t without keeping it.

Each direction class works on one parameter and keeps its tensors in a ``state`` dict that the optimizer owns
(and saves). Parameters with two or more dimensions are treated as matrices of shape
``(shape[0], numel // shape[0])``. A direction hands out its perturbation ρZ_t block by block
(:meth:`Direction.deltas`), in at least float32, and :mod:`paperpack.tezo.perturbation` applies and undoes it
exactly. Dense work is done in blocks of at most :data:`BLOCK_NUMEL` elements, so no temporary is larger than
one block whatever the size of the parameter.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BLOCK_NUMEL",
    "DenseDirection",
    "Direction",
    "LazyLowRankDirection",
    "TemporalLowRankDirection",
    "UpdateHyperparams",
    "dense_noise",
    "derive_seed",
    "lozo_factors",
    "lozo_u",
    "lozo_v",
    "seeded_normal",
    "tezo_coefficients",
    "tezo_factors",
    "work_dtype",
]

BLOCK_NUMEL = 2**20
"""Largest number of elements a dense temporary holds (4 MiB in float32)."""

# Domain tags keep the seeds of different kinds of draws apart.
_TAG_STEP = 1
_TAG_FACTOR = 2
_TAG_LAZY = 3
_SEED_MASK = 2**63 - 1
_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers with full avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """Hash non-negative integers into one 63-bit seed.

    A chain of SplitMix64 finalisers, so seeds of neighbouring steps or parameters are unrelated; a few
    microseconds per call, which matters because every step derives one seed per parameter and pass.

    Examples:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
        True
    """
    state = 0
    for key in keys:
        state = _splitmix64(state ^ _splitmix64(key & _MASK64))
    return state & _SEED_MASK


def seeded_normal(shape: tuple[int, ...], seed: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Draw a standard normal tensor from a private generator seeded with ``seed`` (no global RNG state).

    Examples:
        >>> a = seeded_normal((3,), 7, device=torch.device("cpu"), dtype=torch.float32)
        >>> torch.equal(a, seeded_normal((3,), 7, device=torch.device("cpu"), dtype=torch.float32))
        True
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _blocks(numel: int, block: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(block_index, start, stop)`` covering ``range(numel)`` in pieces of at most ``block``."""
    for index, start in enumerate(range(0, numel, block)):
        yield index, start, min(start + block, numel)


def _row_blocks(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` row ranges whose blocks hold at most :data:`BLOCK_NUMEL` elements."""
    step = max(1, BLOCK_NUMEL // max(cols, 1))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _dense_block(
    seed: int, step: int, index: int, block: int, length: int, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return seeded_normal(
        (length,), derive_seed(seed, _TAG_STEP, step, index, block), device=device, dtype=dtype
    )


def dense_noise(
    shape: tuple[int, ...], seed: int, step: int, index: int, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """MeZO's direction Z_t ~ N(0, I) for parameter ``index`` at step t, materialised in full.

    The optimizer never builds this tensor (it walks the same blocks one at a time); the reference
    implementation and the tests do.
    """
    numel = math.prod(shape)
    pieces = [
        _dense_block(seed, step, index, block, stop - start, device=device, dtype=dtype)
        for block, start, stop in _blocks(numel, BLOCK_NUMEL)
    ]
    flat = torch.cat(pieces) if pieces else torch.empty(0, device=device, dtype=dtype)
    return flat.reshape(shape)


def tezo_factors(
    rows: int, cols: int, rank: int, seed: int, index: int, *, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """TeZO's fixed factors U ∈ R^{m×r} and V ∈ R^{n×r}, entries N(0, 1), drawn once per matrix."""
    U = seeded_normal((rows, rank), derive_seed(seed, _TAG_FACTOR, index, 0), device=device, dtype=dtype)
    V = seeded_normal((cols, rank), derive_seed(seed, _TAG_FACTOR, index, 1), device=device, dtype=dtype)
    return U, V


def tezo_coefficients(
    rank: int, seed: int, step: int, index: int, *, scale_by_rank: bool, device: torch.device
) -> Tensor:
    """TeZO's per-step coefficients τ_t ∈ R^r (float32), N(0, I), or N(0, I/r) with ``scale_by_rank``.

    With N(0, 1) factors, E[⟨G, Z⟩Z] = r·G; τ ~ N(0, I/r) makes the estimate unbiased and gives Z_t the same
    expected squared norm m·n as MeZO's dense direction, so ρ means the same thing for every method.
    """
    tau = seeded_normal(
        (rank,), derive_seed(seed, _TAG_STEP, step, index), device=device, dtype=torch.float32
    )
    return tau / math.sqrt(rank) if scale_by_rank else tau


def lozo_factors(
    rows: int,
    cols: int,
    rank: int,
    seed: int,
    *,
    step: int,
    index: int,
    interval: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """LOZO's factors at step t: U_t ∈ R^{m×r} fresh each step, V ∈ R^{n×r} fresh every ν steps."""
    return lozo_u(rows, rank, seed, step, index, device=device, dtype=dtype), lozo_v(
        cols, rank, seed, step // interval, index, device=device, dtype=dtype
    )


def lozo_u(
    rows: int, rank: int, seed: int, step: int, index: int, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """LOZO's U_t (fresh each step)."""
    return seeded_normal((rows, rank), derive_seed(seed, _TAG_STEP, step, index), device=device, dtype=dtype)


def lozo_v(
    cols: int, rank: int, seed: int, epoch: int, index: int, *, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """LOZO's V for the lazy epoch k = ⌊t/ν⌋."""
    return seeded_normal((cols, rank), derive_seed(seed, _TAG_LAZY, epoch, index), device=device, dtype=dtype)


@dataclass(frozen=True)
class UpdateHyperparams:
    """What one update needs besides the projected gradient.

    Attributes:
        lr: learning rate η of this step (the scheduler's current value).
        weight_decay: decoupled weight decay λ: W ← W − η·λ·W before the gradient step.
        beta1: β1, the first-moment (momentum) decay.
        beta2: β2, the second-moment decay (Adam only).
        adam_eps: ε added to the square root of the second moment (Adam only).
        update_count: k, the number of updates applied so far including this one (Adam's bias correction).
    """

    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    adam_eps: float
    update_count: int


class Direction(ABC):
    """The random direction Z_t of one parameter and the update rule applied along it.

    Args:
        shape: the parameter's shape.
        index: the parameter's position in the optimizer (part of every seed).
        seed: the optimizer's seed.
        rule: ``"sgd"``, ``"momentum"`` or ``"adam"``.
    """

    def __init__(self, shape: tuple[int, ...], *, index: int, seed: int, rule: str) -> None:
        self.shape = shape
        self.index = index
        self.seed = seed
        self.rule = rule

    @abstractmethod
    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """The persistent state of this parameter (moments, cached factors) before the first step."""

    @abstractmethod
    def deltas(
        self, param: Tensor, state: dict[str, Tensor], step: int, scale: float
    ) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(start, stop, scale·Z_t)`` for consecutive blocks of the flattened parameter.

        Each block of ``scale·Z_t`` is 1-D, holds the entries ``start:stop`` of ``param.view(-1)`` and is in
        the working dtype (at least float32); the same call yields bitwise the same blocks.
        """

    @abstractmethod
    def update_(
        self, param: Tensor, state: dict[str, Tensor], step: int, kappa: float, hp: UpdateHyperparams
    ) -> None:
        """In place: apply the update rule to the projected gradient g_t = κ·Z_t (and weight decay)."""

    @staticmethod
    def _decay_(param: Tensor, hp: UpdateHyperparams) -> None:
        if hp.weight_decay != 0.0:
            param.mul_(1.0 - hp.lr * hp.weight_decay)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype perturbations are formed in: the parameter's, but at least float32."""
    return torch.promote_types(dtype, torch.float32)


class DenseDirection(Direction):
    """MeZO's dense Gaussian direction Z_t ~ N(0, I) (also TeZO's and LOZO's rule for 1-D parameters).

    Rules, with g_t = κ·Z_t:

    - SGD: θ ← θ − η·g_t.
    - momentum: m ← β1·m + (1 − β1)·g_t; θ ← θ − η·m.
    - Adam: m as above; v ← β2·v + (1 − β2)·g_t²; θ ← θ − η·m̂ / (√v̂ + ε) with m̂ = m/(1 − β1^k),
      v̂ = v/(1 − β2^k).

    The moments are dense (one or two extra copies of the parameter), which is MeZO-Adam's memory cost.
    """

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """Dense moments: m for momentum, m and v for Adam, one copy of the parameter each.

        They are kept in at least float32: in float16, v = g² underflows and Adam's ε = 1e-8 rounds to 0.
        """
        state: dict[str, Tensor] = {}
        dtype = work_dtype(param.dtype)
        if self.rule in ("momentum", "adam"):
            state["exp_avg"] = torch.zeros(param.shape, device=param.device, dtype=dtype)
        if self.rule == "adam":
            state["exp_avg_sq"] = torch.zeros(param.shape, device=param.device, dtype=dtype)
        return state

    def _noise(self, step: int, block: int, length: int, like: Tensor) -> Tensor:
        return _dense_block(
            self.seed, step, self.index, block, length, device=like.device, dtype=work_dtype(like.dtype)
        )

    def deltas(
        self, param: Tensor, state: dict[str, Tensor], step: int, scale: float
    ) -> Iterator[tuple[int, int, Tensor]]:
        """scale·Z_t, one block of Z_t at a time."""
        for block, start, stop in _blocks(param.numel(), BLOCK_NUMEL):
            yield start, stop, self._noise(step, block, stop - start, param).mul_(scale)

    def update_(
        self, param: Tensor, state: dict[str, Tensor], step: int, kappa: float, hp: UpdateHyperparams
    ) -> None:
        """Weight decay, then the SGD, momentum or Adam rule on g_t = κ·Z_t, block by block."""
        self._decay_(param, hp)
        flat = param.view(-1)
        exp_avg = state["exp_avg"].view(-1) if "exp_avg" in state else None
        exp_avg_sq = state["exp_avg_sq"].view(-1) if "exp_avg_sq" in state else None
        for block, start, stop in _blocks(flat.numel(), BLOCK_NUMEL):
            grad = self._noise(step, block, stop - start, flat).mul_(kappa)
            target = flat[start:stop]
            if exp_avg is None:
                target.add_(grad, alpha=-hp.lr)
                continue
            m = exp_avg[start:stop]
            m.mul_(hp.beta1).add_(grad, alpha=1.0 - hp.beta1)
            if exp_avg_sq is None:
                target.add_(m, alpha=-hp.lr)
                continue
            v = exp_avg_sq[start:stop]
            v.mul_(hp.beta2).addcmul_(grad, grad, value=1.0 - hp.beta2)
            bias1 = 1.0 - hp.beta1**hp.update_count
            bias2 = 1.0 - hp.beta2**hp.update_count
            denom = (v / bias2).sqrt_().add_(hp.adam_eps)
            target.addcdiv_(m, denom, value=-hp.lr / bias1)


class _MatrixDirection(Direction):
    """A direction on the matrix view W ∈ R^{m×n} of a parameter with two or more dimensions."""

    def __init__(self, shape: tuple[int, ...], *, index: int, seed: int, rule: str, rank: int) -> None:
        super().__init__(shape, index=index, seed=seed, rule=rule)
        self.rank = rank
        self.rows = shape[0]
        self.cols = math.prod(shape) // shape[0] if shape[0] else 0

    def _matrix(self, param: Tensor) -> Tensor:
        return param.view(self.rows, self.cols)


class TemporalLowRankDirection(_MatrixDirection):
    """TeZO's direction Z_t = U diag(τ_t) Vᵀ = Σ_s τ_{t,s}·u_s v_sᵀ with U, V fixed for the run.

    The perturbation is one fused ``addmm_`` (cost m·n·r, no m×n temporary, r random numbers per step). With
    g_t = κ·τ_t ∈ R^r the projected gradient is U diag(g_t) Vᵀ and the rules keep r-vectors only:

    - TeZO-SGD: W ← W − η·U diag(g_t) Vᵀ.
    - TeZO-m: m ← β1·m + (1 − β1)·g_t; W ← W − η·U diag(m) Vᵀ. Exact: with U, V fixed, the EMA of the
      low-rank gradients equals U diag(EMA of g_t) Vᵀ.
    - TeZO-Adam (separable second moment, the paper's Eq. 8 as read by the paper note):
      v ← β2·v + (1 − β2)·g_t² and W ← W − η·M / (√S + ε) with M = U diag(m̂) Vᵀ and
      S = (U⊙U) diag(v̂) (V⊙V)ᵀ, i.e. the second moment keeps the diagonal terms Σ_s v_s·u_s² v_s² of
      (U diag(g) Vᵀ)² and drops the cross terms. M and S are built in row blocks, so the temporaries stay
      below :data:`BLOCK_NUMEL` elements.

    Args:
        cache_factors: keep U and V in the state ((m + n)·r numbers) or regenerate them from their seed at
            each use (no memory, four extra draws of (m + n)·r numbers per step).
        scale_by_rank: draw τ_t ~ N(0, I/r) instead of N(0, I) (unbiased estimate; ours, off by default).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        index: int,
        seed: int,
        rule: str,
        rank: int,
        cache_factors: bool,
        scale_by_rank: bool,
    ) -> None:
        super().__init__(shape, index=index, seed=seed, rule=rule, rank=rank)
        self.cache_factors = cache_factors
        self.scale_by_rank = scale_by_rank
        # τ_t is used by the three perturbations and the update of step t: draw it once per step.
        self._tau: tuple[int, Tensor] | None = None

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """Cached U, V (when ``cache_factors``) and the r-vector moments, in at least float32."""
        state: dict[str, Tensor] = {}
        if self.cache_factors:
            state["U"], state["V"] = self._draw_factors(param)
        # r numbers each: kept in at least float32 whatever the weights' dtype.
        moment_dtype = torch.promote_types(param.dtype, torch.float32)
        if self.rule in ("momentum", "adam"):
            state["exp_avg"] = torch.zeros(self.rank, device=param.device, dtype=moment_dtype)
        if self.rule == "adam":
            state["exp_avg_sq"] = torch.zeros(self.rank, device=param.device, dtype=moment_dtype)
        return state

    def _draw_factors(self, param: Tensor) -> tuple[Tensor, Tensor]:
        return tezo_factors(
            self.rows, self.cols, self.rank, self.seed, self.index, device=param.device, dtype=param.dtype
        )

    def factors(self, param: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The fixed factors (U, V) of this matrix, from the state or regenerated."""
        if self.cache_factors:
            return state["U"], state["V"]
        return self._draw_factors(param)

    def coefficients(self, step: int, device: torch.device) -> Tensor:
        """τ_t for this matrix (float32)."""
        if self._tau is None or self._tau[0] != step or self._tau[1].device != device:
            tau = tezo_coefficients(
                self.rank, self.seed, step, self.index, scale_by_rank=self.scale_by_rank, device=device
            )
            self._tau = (step, tau)
        return self._tau[1]

    def _add_low_rank_(self, param: Tensor, U: Tensor, V: Tensor, coefficients: Tensor, alpha: float) -> None:
        """W ← W + α·U diag(c) Vᵀ without an m×n temporary."""
        work_dtype = torch.promote_types(U.dtype, torch.float32)
        scaled = (coefficients.to(work_dtype) * alpha).to(U.dtype)
        self._matrix(param).addmm_(U * scaled, V.T)

    def deltas(
        self, param: Tensor, state: dict[str, Tensor], step: int, scale: float
    ) -> Iterator[tuple[int, int, Tensor]]:
        """scale·U diag(τ_t) Vᵀ in row blocks (one matrix product each, r numbers drawn per step)."""
        U, V = self.factors(param, state)
        work = work_dtype(param.dtype)
        scaled = self.coefficients(step, param.device).to(work) * scale
        V_t = V.to(work).T
        for start, stop in _row_blocks(self.rows, self.cols):
            block = (U[start:stop].to(work) * scaled) @ V_t
            yield start * self.cols, stop * self.cols, block.view(-1)

    def update_(
        self, param: Tensor, state: dict[str, Tensor], step: int, kappa: float, hp: UpdateHyperparams
    ) -> None:
        """Weight decay, then TeZO-SGD, TeZO-m or TeZO-Adam on g_t = κ·τ_t."""
        self._decay_(param, hp)
        U, V = self.factors(param, state)
        tau = self.coefficients(step, param.device)
        if self.rule == "sgd":
            self._add_low_rank_(param, U, V, tau, -hp.lr * kappa)
            return
        exp_avg = state["exp_avg"]
        grad = tau.to(exp_avg.dtype) * kappa
        exp_avg.mul_(hp.beta1).add_(grad, alpha=1.0 - hp.beta1)
        if self.rule == "momentum":
            self._add_low_rank_(param, U, V, exp_avg, -hp.lr)
            return
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(hp.beta2).addcmul_(grad, grad, value=1.0 - hp.beta2)
        # M and S in at least float32: in float16, S underflows and ε = 1e-8 rounds to 0.
        work = work_dtype(param.dtype)
        m_hat = (exp_avg / (1.0 - hp.beta1**hp.update_count)).to(work)
        v_hat = (exp_avg_sq / (1.0 - hp.beta2**hp.update_count)).to(work)
        V = V.to(work)
        V_sq_t = V.square().T
        W = self._matrix(param)
        for start, stop in _row_blocks(self.rows, self.cols):
            U_block = U[start:stop].to(work)
            first = (U_block * m_hat) @ V.T
            second = (U_block.square() * v_hat) @ V_sq_t
            W[start:stop].addcdiv_(first, second.sqrt_().add_(hp.adam_eps), value=-hp.lr)


class LazyLowRankDirection(_MatrixDirection):
    """LOZO's direction Z_t = U_t Vᵀ (Chen et al., 2024) with the SGD rule W ← W − η·κ·U_t Vᵀ.

    U_t is regenerated from the step seed at each use; V is redrawn every ν steps (step ``t`` uses lazy epoch
    ⌊t/ν⌋) and kept in the state when ``cache_factors`` (n·r numbers), else regenerated at each use.
    With ``scale_by_rank`` the direction is divided by √r (ours, as for TeZO).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        index: int,
        seed: int,
        rank: int,
        interval: int,
        cache_factors: bool,
        scale_by_rank: bool,
    ) -> None:
        super().__init__(shape, index=index, seed=seed, rule="sgd", rank=rank)
        self.interval = interval
        self.cache_factors = cache_factors
        self.scale = 1.0 / math.sqrt(rank) if scale_by_rank else 1.0

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """The cached V of lazy epoch 0 (when ``cache_factors``)."""
        return {"V": self._draw_v(param, 0)} if self.cache_factors else {}

    def _draw_v(self, param: Tensor, epoch: int) -> Tensor:
        return lozo_v(
            self.cols, self.rank, self.seed, epoch, self.index, device=param.device, dtype=param.dtype
        )

    def factors(self, param: Tensor, state: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor]:
        """(U_t, V) at step t; a cached V is redrawn in place when t starts a new lazy epoch."""
        U = lozo_u(self.rows, self.rank, self.seed, step, self.index, device=param.device, dtype=param.dtype)
        if not self.cache_factors:
            return U, self._draw_v(param, step // self.interval)
        if step % self.interval == 0 and step > 0:
            state["V"].copy_(self._draw_v(param, step // self.interval))
        return U, state["V"]

    def deltas(
        self, param: Tensor, state: dict[str, Tensor], step: int, scale: float
    ) -> Iterator[tuple[int, int, Tensor]]:
        """scale·U_t Vᵀ in row blocks (one matrix product each)."""
        U, V = self.factors(param, state, step)
        work = work_dtype(param.dtype)
        V_t = V.to(work).T
        for start, stop in _row_blocks(self.rows, self.cols):
            block = (U[start:stop].to(work) @ V_t).mul_(scale * self.scale)
            yield start * self.cols, stop * self.cols, block.view(-1)

    def update_(
        self, param: Tensor, state: dict[str, Tensor], step: int, kappa: float, hp: UpdateHyperparams
    ) -> None:
        """Weight decay, then W ← W − η·κ·U_t Vᵀ."""
        self._decay_(param, hp)
        U, V = self.factors(param, state, step)
        self._matrix(param).addmm_(U, V.T, alpha=-hp.lr * kappa * self.scale)
