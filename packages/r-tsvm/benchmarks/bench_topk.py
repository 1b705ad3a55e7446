"""The per-task top-k step of TSV-M's fast path against randomized and partial alternatives, in CPU time.

TSV-M keeps the top k = ⌊r/T⌋ singular triplets of each task matrix (k ≈ r/3 with three tasks). The fast path
(:func:`paperpack.r_tsvm.methods.spectral.top_triplets`) takes them from a full eigendecomposition of each
Gram matrix. This script times, per matrix shape and spectrum, on one thread (process CPU time), the work of
getting the three tasks' U_k, σ and V_kᵀ:

- ``exact``: the exact path (a batched SVD);
- ``gram``: the fast path (Gram matrix by blocks, full symmetric eigendecomposition);
- ``subspace p q``: randomized subspace iteration on the Gram matrix G = Δ Δᵀ: a seeded Gaussian block of
  k + p columns, q + 1 products with G, each followed by a QR re-orthonormalization, then Rayleigh–Ritz
  (eigendecomposition of Qᵀ G Q) and the top k Ritz vectors;
- ``chebyshev p d``: the same, but after one product the block is filtered by the Chebyshev polynomial of
  degree d that is small on [0, θ] (θ: the smallest Ritz value of the first block) and grows above it;
- ``range p q``: the randomized range finder on Δ itself (Halko, Martinsson and Tropp): Y = Δ Ω, q power
  iterations Δ (Δᵀ Q), each re-orthonormalized, then the SVD of Qᵀ Δ.

Every candidate ends like the fast path: σ_i = ‖u_iᵀ Δ‖ and V_kᵀ = diag(1/σ) U_kᵀ Δ. For each candidate the
largest relative excess of its truncation error ‖Δ_t − U diag(σ) Vᵀ‖_F over the exact path's (over the three
tasks) is printed; the issue's target is at most 1 %. The spectra: ``flat`` (fine-tunes = base + 1e-3 Gaussian
noise, as in ``bench_fast_svd.py``: a quarter-circle spectrum with no gap at k) and ``decaying`` (σ_i = 1/i on
random singular vectors). The candidates' order alternates between rounds; medians. Run from the workspace
root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_topk.py --hidden 2048 \\
        --intermediate 5632
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from paperpack.r_tsvm.methods.spectral import gram, top_triplets

NUM_TASKS = 3
SEED = 1234
Candidate = Callable[[Tensor, int], list[Tensor]]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _orth(block: Tensor) -> Tensor:
    return torch.linalg.qr(block).Q


def _finish(wide: Tensor, left: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U_k, σ, V_kᵀ from the top-k left vectors, as the fast path does."""
    projected = left.mT @ wide
    singular = torch.linalg.vector_norm(projected, dim=1)
    return left, singular, projected / singular[:, None]


def _ritz(matrix: Tensor, basis: Tensor, k: int) -> Tensor:
    _, vectors = torch.linalg.eigh(basis.mT @ (matrix @ basis))
    top: Tensor = basis @ vectors.flip(-1)[:, :k]
    return top


def _first_blocks(wide: Tensor, columns: int) -> list[tuple[Tensor, Tensor]]:
    """Per task: its Gram matrix G and the orthonormalized G Ω for a seeded Gaussian Ω of ``columns`` columns."""
    generator = torch.Generator().manual_seed(SEED)
    grams = gram(wide)
    return [(g, _orth(g @ torch.randn(g.shape[0], columns, generator=generator))) for g in grams]


def subspace(oversampling: int, iterations: int) -> Candidate:
    def run(wide: Tensor, k: int) -> list[Tensor]:
        out = []
        for g, first in _first_blocks(wide, k + oversampling):
            block = first
            for _ in range(iterations):
                block = _orth(g @ block)
            out.append(_ritz(g, block, k))
        return out

    return run


def chebyshev(oversampling: int, degree: int) -> Candidate:
    def run(wide: Tensor, k: int) -> list[Tensor]:
        out = []
        for g, block in _first_blocks(wide, k + oversampling):
            product = g @ block
            cut = float(torch.linalg.eigvalsh(block.mT @ product)[0])  # the smallest Ritz value
            center = half = cut / 2  # the interval [0, cut] mapped to [-1, 1]
            previous, current = block, (product - center * block) / half
            for _ in range(degree - 1):
                previous, current = current, 2 * (g @ current - center * current) / half - previous
            out.append(_ritz(g, _orth(current), k))
        return out

    return run


def range_finder(oversampling: int, iterations: int) -> Candidate:
    def run(wide: Tensor, k: int) -> list[Tensor]:
        generator = torch.Generator().manual_seed(SEED)
        out = []
        for delta in wide:
            block = _orth(delta @ torch.randn(delta.shape[1], k + oversampling, generator=generator))
            for _ in range(iterations):
                block = _orth(delta @ _orth(delta.mT @ block))
            left, _, _ = torch.linalg.svd(block.mT @ delta, full_matrices=False)
            out.append(block @ left[:, :k])
        return out

    return run


def candidates() -> dict[str, Candidate | str]:
    table: dict[str, Candidate | str] = {"exact": "exact", "gram": "fast"}
    for p, q in ((64, 1), (64, 2), (64, 3), (128, 2)):
        table[f"subspace p={p} q={q}"] = subspace(p, q)
    for p, d in ((64, 3), (64, 4), (32, 4)):
        table[f"chebyshev p={p} d={d}"] = chebyshev(p, d)
    for p, q in ((64, 1), (64, 2)):
        table[f"range p={p} q={q}"] = range_finder(p, q)
    return table


def task_matrices(rows: int, cols: int, spectrum: str) -> Tensor:
    g = torch.Generator().manual_seed(0)
    if spectrum == "flat":
        base = 0.02 * torch.randn(rows, cols, generator=g)
        return torch.stack(
            [base + 1e-3 * torch.randn(rows, cols, generator=g) - base for _ in range(NUM_TASKS)]
        )
    r = min(rows, cols)
    values = torch.arange(1, r + 1, dtype=torch.float32).reciprocal()
    out = []
    for _ in range(NUM_TASKS):
        left = _orth(torch.randn(rows, r, generator=g))
        right = _orth(torch.randn(cols, r, generator=g))
        out.append((left * values) @ right.mT)
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--spectra", nargs="+", default=["flat", "decaying"], choices=["flat", "decaying"])
    parser.add_argument("--rounds", type=int, default=1, help="rounds alternating the candidates' order")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = {"q_proj": (args.hidden, args.hidden), "up_proj": (args.intermediate, args.hidden)}
    table = candidates()
    for name, (rows, cols) in shapes.items():
        for spectrum in args.spectra:
            deltas = task_matrices(rows, cols, spectrum)
            wide = deltas if rows <= cols else deltas.mT.contiguous()
            k = min(rows, cols) // NUM_TASKS
            seconds: dict[str, list[float]] = {label: [] for label in table}
            errors: dict[str, list[float]] = {}
            for round_ in range(args.rounds):
                order = list(table) if round_ % 2 == 0 else list(table)[::-1]
                for label in order:
                    candidate = table[label]
                    start = time.process_time()
                    if isinstance(candidate, str):
                        triplets = top_triplets(wide, [k] * NUM_TASKS, candidate)
                    else:
                        triplets = [
                            _finish(w, left) for w, left in zip(wide, candidate(wide, k), strict=True)
                        ]
                    seconds[label].append(time.process_time() - start)
                    errors[label] = [
                        float((w - (u * s) @ vh).double().norm())
                        for w, (u, s, vh) in zip(wide, triplets, strict=True)
                    ]
            for label in table:
                excess = max(e / x - 1 for e, x in zip(errors[label], errors["exact"], strict=True))
                row = {
                    "shape": f"{name} {rows}x{cols}",
                    "spectrum": spectrum,
                    "candidate": label,
                    "cpu_s": round(statistics.median(seconds[label]), 2),
                    "excess": float(f"{excess:.2e}"),
                    "load": load(),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
