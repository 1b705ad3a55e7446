"""Extraction of one m×n layer at preheat rank R: "exact" (factored) against the dense SVD, side by side.

The preheated factors are B (m×R) and A (R×n); the update is B·A. Arms, interleaved over ``--rounds`` rounds,
each timed from the factors to (U, S, Vh), medians reported:

- ``exact``: :func:`paperpack.hrp_lora.factored_svd` (two thin QRs and an R×R SVD; the m×n matrix never exists).
- ``dense``: ``torch.linalg.svd`` of the formed product B·A (``full_matrices=False``), truncated to R.
- ``lowrank``: ``torch.svd_lowrank`` of the formed product (q = R, two power iterations).

Accuracy of "exact" against "dense" (both float32, as a model's adapter is): the largest relative difference
of the R singular values, and the largest principal angle between their top-r right and left singular
subspaces; and of both against a float64 dense SVD (which of the two is nearer the truth).

Two spectra: ``gaussian`` (B and A Gaussian, as right after a preheat from PEFT's init: well conditioned)
and ``decaying`` (B with singular values 0.8^i: a trained factor with a fast-decaying spectrum, condition
number ~1e6 at R = 64).

Usage:
    python packages/hrp-lora/benchmarks/bench_extraction.py [--m 4096] [--n 4096] [--rank 64] [--top 8]
        [--rounds 3] [--threads 2] [--spectra gaussian decaying]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from paperpack.hrp_lora import factored_svd


def factors(m: int, n: int, R: int, spectrum: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    B = torch.randn(m, R, generator=generator, dtype=torch.float64) / m**0.5
    A = torch.randn(R, n, generator=generator, dtype=torch.float64) / n**0.5
    if spectrum == "decaying":
        Q, _ = torch.linalg.qr(B)
        B = Q * (0.8 ** torch.arange(R, dtype=torch.float64))
    return B.float(), A.float()


def dense(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
    R = B.shape[1]
    return U[:, :R], S[:R], Vh[:R]


def lowrank(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, V = torch.svd_lowrank(B @ A, q=B.shape[1], niter=2)
    return U, S, V.mT


def max_angle(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Largest principal angle (radians) between the row spans of X and Y, from its sine (accurate near 0)."""
    Q_x, _ = torch.linalg.qr(X.double().mT)
    Q_y, _ = torch.linalg.qr(Y.double().mT)
    return float(torch.arcsin(torch.linalg.svdvals(Q_x - Q_y @ (Q_y.mT @ Q_x)).max().clamp(max=1.0)))


def relative(S: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((S.double() - reference.double()).abs() / reference.double()).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--top", type=int, default=8, help="r: the subspace compared")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--spectra", nargs="+", default=["gaussian", "decaying"], choices=["gaussian", "decaying"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = args.top
    print(f"m={args.m} n={args.n} R={args.rank} r={r} threads={args.threads} load average {os.getloadavg()}")
    for spectrum in args.spectra:
        B, A = factors(args.m, args.n, args.rank, spectrum)
        arms = {
            "exact": lambda B=B, A=A: factored_svd(B, A),
            "dense": lambda B=B, A=A: dense(B, A),
            "lowrank": lambda B=B, A=A: lowrank(B, A),
        }
        times: dict[str, list[float]] = {name: [] for name in arms}
        results = {name: arm() for name, arm in arms.items()}  # warm-up: kernels, thread pools
        for _ in range(args.rounds):
            for name, arm in arms.items():
                started = time.perf_counter()
                results[name] = arm()
                times[name].append(time.perf_counter() - started)
        truth = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
        truth = (truth[0][:, : args.rank], truth[1][: args.rank], truth[2][: args.rank])
        median = {name: statistics.median(values) for name, values in times.items()}
        U_e, S_e, Vh_e = results["exact"]
        U_d, S_d, Vh_d = results["dense"]
        print(f"\n[{spectrum}] σ_1/σ_R = {float(truth[1][0] / truth[1][-1]):.3g}")
        print(
            f"{'arm':8} {'median s':>9} {'vs exact':>9}  {'σ rel. err vs fp64':>19} {'V angle vs fp64':>16}"
        )
        for name in arms:
            _, S, Vh = results[name]
            print(
                f"{name:8} {median[name]:9.4f} {median[name] / median['exact']:8.1f}x  {relative(S, truth[1]):19.2e} "
                f"{max_angle(Vh[:r], truth[2][:r]):16.2e}"
            )
        print(
            f"exact vs dense (float32): speed-up {median['dense'] / median['exact']:.0f}x, σ max rel. diff "
            f"{relative(S_e, S_d):.2e}, top-{r} angles: right {max_angle(Vh_e[:r], Vh_d[:r]):.2e}, "
            f"left {max_angle(U_e[:, :r].mT, U_d[:, :r].mT):.2e}"
        )
        print("times per round:", {name: [round(t, 4) for t in values] for name, values in times.items()})
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
