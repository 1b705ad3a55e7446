"""Ways to take the polar factor of TSV-M's nearly square stacks, measured against the SVD (one thread, CPU time).

With T = 3 tasks at rank k = ⌊n/3⌋ the stacked singular vectors U = [U_1 U_2 U_3] of an n × n task matrix are
n × 3k, nearly square and ill-conditioned (σ_max/σ_min about 1e3), and there the fast path takes the polar
factor from an SVD, as the exact path does. This benchmark builds those stacks (three experts of base + 1e-3
noise, the fast path's triplets) and takes their polar factor P Qᵀ four ways:

- ``svd``: ``torch.linalg.svd`` (what both paths use here);
- ``gram64``: X (XᵀX)^(-1/2) from a float64 eigendecomposition of the Gram matrix (squaring the condition
  number costs about ε·κ² of accuracy, so float32 is not enough; float64 is);
- ``gram32``: the same in float32 (what the fast path does for float32 input where the Gram matrix is well-conditioned),
  to show the accuracy it would lose here;
- ``newton-schulz``: the scaled cubic Newton–Schulz iteration X ← X (a I − b XᵀX), each step the cubic with
  equal error at ℓ and 1 for singular values in [ℓ, 1], given the true σ_max and σ_min for free (from an untimed SVD), so
  its count of iterations is the smallest the cubic can reach; then plain steps until ‖XᵀX − I‖_F is below
  10 ε n. Each iteration costs two n × n matrix products.

For each it prints the median CPU time over interleaved rounds, the ratio to the SVD, the orthogonality error
‖PᵀP − I‖_F, the largest entry of P − P_64 (P_64: the polar factor from a float64 SVD of the same X) and the
largest entry of the merged matrix U⊥ Σ V⊥ᵀ minus the exact path's merge, in float32 and float64. Run from the
workspace root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_polar.py --sizes 1024 2048
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from paperpack.r_tsvm.methods.spectral import top_triplets
from paperpack.r_tsvm.methods.tsv import tsv_combine

NUM_EXPERTS = 3


def svd_polar(x: Tensor) -> Tensor:
    left, _, right = torch.linalg.svd(x, full_matrices=False)
    return left @ right


def gram_polar(x: Tensor, dtype: torch.dtype) -> Tensor:
    """X (XᵀX)^(-1/2) for a tall X, the Gram matrix's eigendecomposition in ``dtype``."""
    wide = x.shape[0] < x.shape[1]
    tall = (x.mT if wide else x).to(dtype)
    values, vectors = torch.linalg.eigh(tall.mT @ tall)
    polar = (tall @ ((vectors * values.clamp(min=torch.finfo(dtype).tiny).rsqrt()) @ vectors.mT)).to(x.dtype)
    return polar.mT if wide else polar


def newton_schulz(x: Tensor, sigma_max: float, sigma_min: float) -> tuple[Tensor, int]:
    """Scaled cubic Newton–Schulz, each step the cubic with p(ℓ) = p(1) on [ℓ, 1] (σ_max and σ_min given)."""
    wide = x.shape[0] < x.shape[1]
    y = (x.mT if wide else x) / (sigma_max * (1 + 1e-6))
    eye = torch.eye(y.shape[1], dtype=y.dtype)
    low, steps = sigma_min / (sigma_max * (1 + 1e-6)), 0
    while low < 0.9 and steps < 100:
        alpha = math.sqrt(3.0 / (1.0 + low + low * low))  # the equioscillating cubic: p(ℓ) = p(1)
        y = y @ (1.5 * alpha * eye - 0.5 * alpha**3 * (y.mT @ y))
        low, steps = 1.5 * alpha * low - 0.5 * alpha**3 * low**3, steps + 1
    tolerance = 10 * torch.finfo(y.dtype).eps * y.shape[1]
    while steps < 100:
        gram = y.mT @ y
        if float(torch.linalg.matrix_norm(gram - eye)) <= tolerance:
            break
        y, steps = y @ (1.5 * eye - 0.5 * gram), steps + 1
    return (y.mT if wide else y), steps


def stacks(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The task matrices, TSV-M's stacked U and Vᵀ and singular values (fast path), for n × n experts."""
    generator = torch.Generator().manual_seed(0)
    deltas = torch.stack([1e-3 * torch.randn(n, n, generator=generator) for _ in range(NUM_EXPERTS)])
    deltas = deltas.to(dtype)
    kept = top_triplets(deltas, [n // NUM_EXPERTS] * NUM_EXPERTS, "fast")
    u = torch.cat([part[0] for part in kept], dim=1)
    s = torch.cat([part[1] for part in kept])
    vh = torch.cat([part[2] for part in kept], dim=0)
    return deltas, u, s, vh


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    for n in args.sizes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            deltas, u, s, vh = stacks(n, dtype)
            exact = tsv_combine(deltas, [n // NUM_EXPERTS] * NUM_EXPERTS, svd="exact").double()
            bounds = {}
            for name, x in (("U", u), ("Vt", vh)):
                values = torch.linalg.svdvals(x.double())
                bounds[name] = (float(values[0]), float(values[-1]))
            candidates: dict[str, Callable[[Tensor, tuple[float, float]], tuple[Tensor, int | None]]] = {
                "svd": lambda x, _: (svd_polar(x), None),
                "gram64": lambda x, _: (gram_polar(x, torch.float64), None),
                "gram32": lambda x, _: (gram_polar(x, torch.float32), None),
                "newton-schulz": lambda x, bound: newton_schulz(x, *bound),
            }
            seconds: dict[str, list[float]] = {name: [] for name in candidates}
            results: dict[str, dict[str, tuple[Tensor, int | None]]] = {}
            for round_ in range(args.rounds):
                order = list(candidates) if round_ % 2 == 0 else list(reversed(candidates))
                for name in order:
                    start = time.process_time()
                    results[name] = {
                        "U": candidates[name](u, bounds["U"]),
                        "Vt": candidates[name](vh, bounds["Vt"]),
                    }
                    seconds[name].append(time.process_time() - start)
            truth = {name: svd_polar(x.double()) for name, x in (("U", u), ("Vt", vh))}
            base = statistics.median(seconds["svd"])
            for name in candidates:
                (pu, steps_u), (pv, steps_v) = results[name]["U"], results[name]["Vt"]
                merged = (pu.double() * s.double()) @ pv.double()
                orth = max(
                    float(
                        torch.linalg.matrix_norm(
                            p.double().mT @ p.double() - torch.eye(p.shape[1], dtype=torch.float64)
                        )
                    )
                    for p in (pu, pv.mT)
                )
                cpu = statistics.median(seconds[name])
                row = {
                    "n": n,
                    "dtype": dtype_name,
                    "shapes": [list(u.shape), list(vh.shape)],
                    "cond": [round(hi / lo) for hi, lo in bounds.values()],
                    "method": name,
                    "cpu_s_both": round(cpu, 3),
                    "svd_cpu_over_this": round(base / cpu, 2),
                    "iterations": [steps_u, steps_v] if steps_u is not None else None,
                    "orth_err": f"{orth:.1e}",
                    "max_p_minus_p64": f"{max(float((p.double() - truth[k]).abs().max()) for k, p in (('U', pu), ('Vt', pv))):.1e}",
                    "max_merged_minus_exact": f"{float((merged - exact).abs().max()):.1e}",
                    "merged_scale": f"{float(exact.abs().max()):.1e}",
                }
                print(json.dumps(row), flush=True)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
