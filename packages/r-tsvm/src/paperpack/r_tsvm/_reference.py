"""Slow, literal reference implementations of the merge methods, written from the papers' equations.

The tests compare every method of :mod:`paperpack.r_tsvm.methods` with these. Element-wise methods loop over
entries in plain Python; spectral methods use numpy and follow the papers' (and FusionBench's) zero-padded
construction literally. Random methods take their uniform draws as an argument so the reference can replay the
draws of the fast code. Each returns a float64 tensor. Not part of the public API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

Array = NDArray[np.float64]
#: One value for every model, or one per model.
PerModel = float | list[float]


def _lists(tensors: Sequence[Tensor]) -> list[list[float]]:
    return [t.double().reshape(-1).tolist() for t in tensors]


def _out(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(like.shape)


def _per_model(value: PerModel, count: int) -> list[float]:
    return list(value) if isinstance(value, list) else [value] * count


def linear(tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = True) -> Tensor:
    """Weighted average (``normalize``) or weighted sum of the models."""
    flats = _lists(tensors)
    out = []
    for i in range(len(flats[0])):
        total = sum(w * f[i] for w, f in zip(weights, flats, strict=True))
        out.append(total / sum(weights) if normalize else total)
    return _out(out, tensors[0])


def task_vectors(base: Tensor, tensors: Sequence[Tensor]) -> tuple[list[float], list[list[float]]]:
    """The base's entries and each model's task vector τ_t = θ_t − θ_0, as flat lists."""
    b = base.double().reshape(-1).tolist()
    return b, [[x - y for x, y in zip(f, b, strict=True)] for f in _lists(tensors)]


def task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    scaling: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """θ_0 + λ Σ_t w_t τ_t (divided by Σ w_t with ``normalize``)."""
    b, taus = task_vectors(base, tensors)
    out = []
    for i in range(len(b)):
        total = sum(w * tau[i] for w, tau in zip(weights, taus, strict=True))
        if normalize:
            total /= sum(weights)
        out.append(b[i] + scaling * total)
    return _out(out, base)


def top_k(values: Sequence[float], density: float) -> set[int]:
    """Indices of the max(1, ⌊density·n⌋) largest magnitudes (density < 1)."""
    if density >= 1:
        return set(range(len(values)))
    k = max(1, int(density * len(values)))
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    return set(order[:k])


def _elect_and_merge(
    b: Sequence[float],
    taus: Sequence[Sequence[float]],
    weights: Sequence[float],
    *,
    scaling: float,
    normalize: bool,
    sign_method: str | None,
) -> list[float]:
    out = []
    total: float
    mass: float
    for i in range(len(b)):
        weighted = [w * tau[i] for w, tau in zip(weights, taus, strict=True)]
        if sign_method is None:
            total = sum(weighted)
            mass = sum(weights)
        else:
            score = sum(weighted) if sign_method == "sum" else sum((v > 0) - (v < 0) for v in weighted)
            sign = 1.0 if score >= 0 else -1.0
            agree = [t for t, v in enumerate(weighted) if v != 0 and math.copysign(1.0, v) == sign]
            total = sum(weighted[t] for t in agree)
            mass = sum(weights[t] for t in agree)
        if normalize:
            total = total / mass if abs(mass) >= 1e-12 else total
        out.append(b[i] + scaling * total)
    return out


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: PerModel,
    scaling: float = 1.0,
    normalize: bool = True,
    sign: str | None = "sum",
) -> Tensor:
    """TIES; ``density`` may be one value or one per model."""
    b, taus = task_vectors(base, tensors)
    densities = _per_model(density, len(taus))
    trimmed = []
    for tau, fraction in zip(taus, densities, strict=True):
        keep = top_k(tau, fraction)
        trimmed.append([v if i in keep else 0.0 for i, v in enumerate(tau)])
    return _out(
        _elect_and_merge(b, trimmed, weights, scaling=scaling, normalize=normalize, sign_method=sign), base
    )


def dare(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: PerModel,
    uniforms: Sequence[Tensor],
    rescale: bool = True,
    scaling: float = 1.0,
    normalize: bool = False,
    sign: str | None = None,
) -> Tensor:
    """DARE; ``density`` may be one value or one per model."""
    b, taus = task_vectors(base, tensors)
    densities = _per_model(density, len(taus))
    dropped = []
    for tau, draws, keep in zip(taus, uniforms, densities, strict=True):
        u = draws.reshape(-1).tolist()
        dropped.append([(v / keep if rescale else v) if u[i] < keep else 0.0 for i, v in enumerate(tau)])
    return _out(
        _elect_and_merge(b, dropped, weights, scaling=scaling, normalize=normalize, sign_method=sign), base
    )


def breadcrumbs(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: PerModel,
    gamma: PerModel,
    scaling: float = 1.0,
    sign: str | None = None,
    normalize: bool = False,
) -> Tensor:
    """Breadcrumbs (with ``sign``: Breadcrumbs + TIES); ``density`` and ``gamma`` may be lists per model."""
    b, taus = task_vectors(base, tensors)
    densities = _per_model(density, len(taus))
    gammas = _per_model(gamma, len(taus))
    masked = []
    for tau, kept, outliers in zip(taus, densities, gammas, strict=True):
        n = len(tau)
        keep_n = int(kept * n)
        bottom = max(0, n - keep_n - int(outliers * n))
        order = sorted(range(n), key=lambda i: abs(tau[i]))
        keep = set(order[bottom : bottom + keep_n])
        masked.append([v if i in keep else 0.0 for i, v in enumerate(tau)])
    return _out(
        _elect_and_merge(b, masked, weights, scaling=scaling, normalize=normalize, sign_method=sign), base
    )


def della(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: PerModel,
    epsilon: PerModel,
    uniforms: Sequence[Tensor],
    scaling: float = 1.0,
    normalize: bool = True,
    sign: str | None = "sum",
) -> Tensor:
    """DELLA (``sign=None``: DELLA linear); ``density`` and ``epsilon`` may be lists per model."""
    b, taus = task_vectors(base, tensors)
    shape = base.shape
    rows = 1 if len(shape) < 2 else shape[0]
    width = len(b) // rows
    densities = _per_model(density, len(taus))
    epsilons = _per_model(epsilon, len(taus))
    pruned = []
    for tau, draws, mean_keep, spread in zip(taus, uniforms, densities, epsilons, strict=True):
        u = draws.reshape(-1).tolist()
        out = [0.0] * len(tau)
        for r in range(rows):
            idx = list(range(r * width, (r + 1) * width))
            order = sorted(idx, key=lambda i: abs(tau[i]))
            for rank, i in enumerate(order):
                q = mean_keep if width == 1 else mean_keep + spread * (rank / (width - 1) - 0.5)
                out[i] = tau[i] / q if u[i] < q else 0.0
        pruned.append(out)
    return _out(
        _elect_and_merge(b, pruned, weights, scaling=scaling, normalize=normalize, sign_method=sign), base
    )


def consensus(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    tall_lambda: float,
    k: int,
    scaling: float = 1.0,
) -> Tensor:
    """Consensus merging: task arithmetic on the entries that at least ``k`` tasks' TALL masks keep."""
    b, taus = task_vectors(base, tensors)
    out = []
    for i in range(len(b)):
        weighted = [w * tau[i] for w, tau in zip(weights, taus, strict=True)]
        mtl = sum(weighted)
        votes = sum(abs(v) >= tall_lambda * abs(mtl - v) for v in weighted)
        out.append(b[i] + scaling * (mtl if votes >= k else 0.0))
    return _out(out, base)


def _np(t: Tensor) -> Array:
    return np.asarray(t.double().numpy(), dtype=np.float64)


def _polar(matrix: Array) -> Array:
    u, _, vh = np.linalg.svd(matrix, full_matrices=False)
    return np.asarray(u @ vh)


def _mean(arrays: Sequence[Array]) -> Array:
    return np.asarray(np.sum(arrays, axis=0) / len(arrays))


def tsv_padded(deltas: Sequence[Array], ranks: Sequence[int], scales: Sequence[float] | None = None) -> Array:
    """TSV-M as written in the paper's code: zero-padded U, S, V sums, then polar factors (numpy).

    The sums have r = min(rows, cols) slots (more only when the ranks add up to more than r), and the unused
    slots stay zero, as in the paper's code; the fast code concatenates only the kept triplets instead.
    """
    num = len(deltas)
    scales = scales or [1.0] * num
    rows, cols = deltas[0].shape
    size = max(min(rows, cols), sum(ranks))
    sum_u = np.zeros((rows, size))
    sum_s = np.zeros(size)
    sum_v = np.zeros((size, cols))
    offset = 0
    for t, delta in enumerate(deltas):
        u, s, vh = np.linalg.svd(delta, full_matrices=False)
        k = ranks[t]
        sum_u[:, offset : offset + k] = u[:, :k]
        sum_s[offset : offset + k] = s[:k] * scales[t]
        sum_v[offset : offset + k, :] = vh[:k, :]
        offset += k
    return np.asarray(_polar(sum_u) @ np.diag(sum_s) @ _polar(sum_v))


def parallel_groups(deltas: Sequence[Array], tolerance: float) -> list[list[int]]:
    """Groups of task matrices whose unit directions lie within ``tolerance`` (or of their negation)."""
    groups: list[list[int]] = []
    for i, delta in enumerate(deltas):
        a = delta / np.linalg.norm(delta) if np.linalg.norm(delta) else None
        for group in groups:
            d = deltas[group[0]]
            if a is None or not np.linalg.norm(d):
                continue
            b = d / np.linalg.norm(d)
            if min(np.linalg.norm(a - b), np.linalg.norm(a + b)) <= tolerance:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def tsv_m(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    alpha: float = 1.0,
    parallel_tol: float = 1e-3,
) -> Tensor:
    """TSV-M: parallel task matrices merged, then :func:`tsv_padded` with k = ⌊r/T⌋ (a mean off matrices)."""
    deltas = [w * (_np(t) - _np(base)) for w, t in zip(weights, tensors, strict=True)]
    if base.dim() != 2:
        return torch.from_numpy(_np(base) + alpha * _mean(deltas))
    deltas = [_mean([deltas[i] for i in g]) for g in parallel_groups(deltas, parallel_tol)]
    k = max(1, min(base.shape) // len(deltas))
    return torch.from_numpy(_np(base) + alpha * tsv_padded(deltas, [k] * len(deltas)))


def iso_c(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], alpha: float = 1.0) -> Tensor:
    """Iso-C: the sum of the task matrices with its singular values replaced by their mean."""
    deltas = [w * (_np(t) - _np(base)) for w, t in zip(weights, tensors, strict=True)]
    if base.dim() != 2:
        return torch.from_numpy(_np(base) + alpha * _mean(deltas))
    u, s, vh = np.linalg.svd(np.sum(deltas, axis=0), full_matrices=False)
    return torch.from_numpy(_np(base) + alpha * (u @ np.diag(np.full_like(s, s.mean())) @ vh))


def iso_cts(
    base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], fraction: float, alpha: float = 1.0
) -> Tensor:
    """Iso-CTS: a common subspace of the sum plus task-specific directions, isotropic singular values."""
    deltas = [w * (_np(t) - _np(base)) for w, t in zip(weights, tensors, strict=True)]
    if base.dim() != 2:
        return torch.from_numpy(_np(base) + alpha * _mean(deltas))
    num = len(deltas)
    r = min(base.shape)
    common = int(r * fraction)
    common = r - round((r - common) / num) * num
    per_task = (r - common) // num
    u, s, vh = np.linalg.svd(np.sum(deltas, axis=0), full_matrices=False)
    u_all = np.zeros((base.shape[0], r))
    s_all = np.zeros(r)
    v_all = np.zeros((r, base.shape[1]))
    uc = u[:, :common]
    for t, delta in enumerate(deltas):
        ut, st, vt = np.linalg.svd(delta - uc @ uc.T @ delta, full_matrices=False)
        u_all[:, t * per_task : (t + 1) * per_task] = ut[:, :per_task]
        s_all[t * per_task : (t + 1) * per_task] = st[:per_task]
        v_all[t * per_task : (t + 1) * per_task] = vt[:per_task]
    u_all[:, num * per_task :] = uc
    s_all[num * per_task :] = s[:common]
    v_all[num * per_task :] = vh[:common]
    merged = _polar(u_all) @ np.diag(np.full(r, s_all.mean())) @ _polar(v_all)
    return torch.from_numpy(_np(base) + alpha * merged)


def slerp(v0: Tensor, v1: Tensor, t: float, threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation of two flattened models (linear when nearly colinear)."""
    a, b = _lists([v0, v1])
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    dot = sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
    if abs(dot) > threshold:
        return _out([(1 - t) * x + t * y for x, y in zip(a, b, strict=True)], v0)
    omega = math.acos(max(-1.0, min(1.0, dot)))
    c0, c1 = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    return _out([c0 * x + c1 * y for x, y in zip(a, b, strict=True)], v0)


def fisher(
    tensors: Sequence[Tensor], fishers: Sequence[Tensor], weights: Sequence[float], floor: float = 1e-6
) -> Tensor:
    """Fisher merging: Σ w_t F_t θ_t / Σ w_t F_t per entry, Fisher values floored."""
    flats, fs = _lists(tensors), _lists(fishers)
    out = []
    for i in range(len(flats[0])):
        num = sum(w * max(f[i], floor) * x[i] for w, f, x in zip(weights, fs, flats, strict=True))
        den = sum(w * max(f[i], floor) for w, f in zip(weights, fs, strict=True))
        out.append(num / den)
    return _out(out, tensors[0])


def regmean(
    tensors: Sequence[Tensor], grams: Sequence[Tensor], weights: Sequence[float], alpha: float
) -> Tensor:
    """RegMean: (Σ w_t G_t)⁻¹ Σ w_t G_t W_tᵀ, off-diagonals of each Gram scaled by ``alpha``."""
    lhs: Any = 0
    rhs: Any = 0
    for w, weight, gram in zip(weights, tensors, grams, strict=True):
        g = _np(gram)
        g = alpha * g + (1 - alpha) * np.diag(np.diag(g))
        lhs = lhs + w * g
        rhs = rhs + w * g @ _np(weight).T
    return torch.from_numpy((np.linalg.inv(lhs) @ rhs).T)


def robust_outliers(delta: Array, kappa: float, mode: str = "mad") -> tuple[float, float, float]:
    """The fraction of nonzero entries with a robust z-score above κ, and the center and scale used."""
    values = delta[delta != 0]
    if values.size < 2:
        return 0.0, 0.0, 0.0
    if mode == "mad":
        # torch.median returns the lower of the two middle values; so does this.
        srt = np.sort(values)
        center = float(srt[(values.size - 1) // 2])
        dev = np.sort(np.abs(values - center))
        scale = 1.4826 * float(dev[(values.size - 1) // 2])
    else:
        center, scale = float(values.mean()), float(values.std(ddof=1))
    if scale <= 0:
        return 0.0, center, 0.0
    return float(np.mean(np.abs(values - center) > kappa * scale)), center, scale


def r_tsvm(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    alpha: float = 1.0,
    outlier_mode: str = "mad",
    kappa: float = 3.0,
    outlier_action: str = "downweight",
    gamma: float = 1.0,
    rank_mode: str = "sparsity",
    eps_rel: float = 1e-3,
    energy_tau: float = 0.9,
    k_min: int = 1,
) -> Tensor:
    """R-TSVM: outlier fractions and weights ω_t, parallel groups, adaptive ranks, then :func:`tsv_padded`."""
    mode, action = outlier_mode, outlier_action
    deltas = [w * (_np(t) - _np(base)) for w, t in zip(weights, tensors, strict=True)]
    num = len(deltas)
    if base.dim() != 2:
        return torch.from_numpy(_np(base) + alpha * _mean(deltas))
    fractions = [0.0] * num
    omega = [1.0] * num
    if mode != "none":
        for t in range(num):
            fractions[t], center, scale = robust_outliers(deltas[t], kappa, mode)
            if action in ("clip", "both") and scale > 0:
                clipped = np.clip(deltas[t], center - kappa * scale, center + kappa * scale)
                deltas[t] = np.where(deltas[t] != 0, clipped, deltas[t])
        mean = sum(fractions) / num
        if action in ("downweight", "both") and mean > 0:
            raw = [1 / (1 + gamma * f / mean) for f in fractions]
            omega = [x * num / sum(raw) for x in raw]
    deltas = [omega[t] * deltas[t] for t in range(num)]
    groups = parallel_groups(deltas, 1e-3)
    deltas = [_mean([deltas[i] for i in g]) for g in groups]
    num = len(deltas)
    k_cap = max(1, min(base.shape) // num)
    k_lo = min(k_min, k_cap)
    zeros: list[float] = []
    for d in deltas:
        nonzero = np.abs(d[d != 0])
        # The median of the nonzero magnitudes (torch.median's lower middle value for an even count).
        scale = float(np.sort(nonzero)[(nonzero.size - 1) // 2]) if nonzero.size else 0.0
        zeros.append(float(np.mean(np.abs(d) <= eps_rel * scale)) if nonzero.size else 1.0)
    sparsity = sum(zeros) / num
    if rank_mode == "fixed":
        ranks = [k_cap] * num
    elif rank_mode == "sparsity":
        ranks = [min(max(round(k_cap * (1 - sparsity)), k_lo), k_cap)] * num
    else:
        ranks = []
        for d in deltas:
            s2 = np.linalg.svd(d, compute_uv=False) ** 2
            cumulative = np.cumsum(s2)
            # The smallest k whose energy reaches τ of the total; τ = 1 keeps every nonzero singular value.
            k = int(np.argmax(cumulative >= energy_tau * cumulative[-1])) + 1 if s2.sum() > 0 else k_lo
            ranks.append(min(max(k, k_lo), k_cap))
    return torch.from_numpy(_np(base) + alpha * tsv_padded(deltas, ranks))


def model_stock(base: Tensor, tensors: Sequence[Tensor], filter_wise: bool = False) -> Tensor:
    """Model Stock (Jang et al., 2024): θ_0 + t (θ_avg − θ_0), t = N cos θ / (1 + (N − 1) cos θ)."""
    b = _np(base)
    taus = [_np(t) - b for t in tensors]
    n = len(taus)
    rows: list[Any] = [slice(None)] if not filter_wise or b.ndim < 2 else list(range(b.shape[0]))
    out = b.copy()
    for row in rows:
        vectors = [tau[row].reshape(-1) for tau in taus]
        cosines = []
        for i in range(n):
            for j in range(i + 1, n):
                na, nb = np.linalg.norm(vectors[i]), np.linalg.norm(vectors[j])
                cosines.append(float(vectors[i] @ vectors[j] / (na * nb)) if na * nb > 0 else 0.0)
        cos = sum(cosines) / len(cosines)
        denominator = 1 + (n - 1) * cos
        t = n * cos / denominator if abs(denominator) >= 1e-6 else 0.0
        out[row] = b[row] + t * np.sum([tau[row] for tau in taus], axis=0) / n
    return torch.from_numpy(out)


def _slerp_vectors(a: Array, b: Array, t: float) -> Array:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na * nb > 0 else 0.0
    cos = max(-1.0, min(1.0, cos))
    if 1 - cos * cos <= 1e-16:
        return np.asarray((1 - t) * a + t * b)
    omega = math.acos(cos)
    return np.asarray((math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega))


def nuslerp(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    flatten: bool = True,
    row_wise: bool = False,
) -> Tensor:
    """NuSLERP: t = w_2 / (w_1 + w_2); task vectors with a base; per vector along the last (or first) axis."""
    t = 0.5 if abs(sum(weights)) < 1e-6 else weights[1] / sum(weights)
    b = None if base is None else _np(base)
    v0, v1 = (_np(x) - (b if b is not None else 0.0) for x in tensors)
    if flatten or v0.ndim < 2:
        out = _slerp_vectors(v0.reshape(-1), v1.reshape(-1), t).reshape(v0.shape)
    else:
        a, c = (v0.T, v1.T) if row_wise else (v0, v1)
        out = np.stack([_slerp_vectors(x, y, t) for x, y in zip(a, c, strict=True)])
        out = out.T if row_wise else out
    return torch.from_numpy(out + (b if b is not None else 0.0))


def sce(base: Tensor, tensors: Sequence[Tensor], select_topk: float = 1.0) -> Tensor:
    """SCE (FuseChat): select by variance, weights ∝ mean τ², erase minority signs, weighted disjoint mean."""
    b = _np(base).reshape(-1)
    taus = [_np(t).reshape(-1) - b for t in tensors]
    n, size = len(taus), len(b)
    if select_topk < 1:
        var = [np.var([tau[i] for tau in taus]) for i in range(size)]
        k = int(select_topk * sum(v != 0 for v in var))
        keep = set(sorted(range(size), key=lambda i: -var[i])[:k]) if k else set()
        taus = [np.array([tau[i] if i in keep else 0.0 for i in range(size)]) for tau in taus]
    energy = [float(np.mean(tau**2)) for tau in taus]
    total = sum(energy)
    eta = [e / total for e in energy] if total > 0 else [1 / n] * n
    out = []
    for i in range(size):
        sign = 1.0 if sum(tau[i] for tau in taus) >= 0 else -1.0
        agree = [t for t in range(n) if taus[t][i] != 0 and math.copysign(1.0, taus[t][i]) == sign]
        mass = sum(eta[t] for t in agree)
        out.append(b[i] + (sum(eta[t] * taus[t][i] for t in agree) / mass if mass > 0 else 0.0))
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)
