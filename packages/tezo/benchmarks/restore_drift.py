"""Does perturb-and-restore leave the weights as they were? Drift of κ = 0 steps per dtype and method.

A step whose two losses are equal has κ = 0: it perturbs the weights (+ρZ_t, −ρZ_t), restores them and applies
a zero update, so the weights must come back bit for bit. The closure here returns a constant loss, so every
step is such a step. Printed per dtype and method, after ``--steps`` steps on one ``--size`` × ``--size``
weight drawn N(0, 0.02²):

- changed: the fraction of entries whose bits differ from the start;
- drift: ‖W_T − W_0‖ / ‖W_0‖;
- step ms: the median time of a step (three perturbation passes; no forward pass);
- real update changed: for comparison, the fraction of entries that one real step at η = ``--lr`` changes
  (the loss ‖Wx − y‖²/n on a fixed random batch, so κ ≠ 0).

Usage:
    python packages/tezo/benchmarks/restore_drift.py [--size 1024] [--steps 100] [--rank 8] [--lr 1e-5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from paperpack.tezo import ZOOptimizer

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def weight(size: int, dtype: torch.dtype) -> torch.nn.Parameter:
    generator = torch.Generator().manual_seed(0)
    return torch.nn.Parameter((torch.randn(size, size, generator=generator) * 0.02).to(dtype))


def measure(method: str, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, float]:
    W = weight(args.size, dtype)
    start = W.detach().clone()
    optimizer = ZOOptimizer([W], method=method, lr=args.lr, eps=1e-3, rank=args.rank, seed=0)
    constant = torch.tensor(1.0)
    times = []
    for _ in range(args.steps):
        began = time.perf_counter()
        optimizer.step(lambda: constant)
        times.append(time.perf_counter() - began)
    bits = torch.int16 if dtype.itemsize == 2 else torch.int32
    changed = float((W.detach().view(bits) != start.view(bits)).float().mean())
    drift = float((W.detach().float() - start.float()).norm() / start.float().norm())

    real = weight(args.size, dtype)
    before = real.detach().clone()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.size, 16, generator=generator).to(dtype)
    y = torch.randn(args.size, 16, generator=generator).to(dtype)
    real_optimizer = ZOOptimizer([real], method=method, lr=args.lr, eps=1e-3, rank=args.rank, seed=0)

    def loss() -> torch.Tensor:
        return ((real @ x - y).float() ** 2).mean()

    real_optimizer.step(loss)
    real_changed = float((real.detach().view(bits) != before.view(bits)).float().mean())
    return {
        "changed": changed,
        "drift": drift,
        "step_ms": statistics.median(times) * 1000,
        "real_changed": real_changed,
        "kappa": float(real_optimizer.last_kappa or 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--methods", nargs="+", default=["tezo_sgd", "mezo_sgd", "lozo"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.steps} steps at κ = 0 on one {args.size} × {args.size} weight, ρ = 1e-3, r = {args.rank}")
    print(f"| dtype | method | changed | drift | step ms | real update changed (η = {args.lr:g}) |")
    print("|---|---|---|---|---|---|")
    for name in args.dtypes:
        for method in args.methods:
            row = measure(method, DTYPES[name], args)
            print(
                f"| {name} | {method} | {row['changed']:.4f} | {row['drift']:.2e} | {row['step_ms']:.1f} | "
                f"{row['real_changed']:.3f} (κ = {row['kappa']:.3g}) |"
            )


if __name__ == "__main__":
    main()
