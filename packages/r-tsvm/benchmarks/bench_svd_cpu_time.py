"""CPU time of one matrix's TSV-M, R-TSVM and Iso-CTS merge, ``svd: exact`` against ``svd: fast``, one thread.

Process CPU time (``time.process_time``), unlike wall time, hardly moves with the load of a shared machine.
Three experts (base + 1e-3 noise) of the decoder's two matrix shapes, hidden × hidden (attention) and
intermediate × hidden (MLP): by default those of ``bench_fast_svd.py``'s default model (1024, 2816); the 2 GB
model's are ``--hidden 2048 --intermediate 5632``. The two paths alternate their order in each round; prints
the median ratio exact / fast and the largest difference of the merged tensors, then where TSV-M's time goes on
each path, step by step (the parallel-task check, the per-task triplets, the two polar factors), and each task's
truncation error ‖Δ_t − Δ_t,k‖_F at TSV-M's rank on both paths (the largest relative excess of the fast path's
over the exact one's). ``--methods`` with no name prints only the steps. Run from the workspace root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_svd_cpu_time.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from paperpack.r_tsvm import merge_tensors
from paperpack.r_tsvm.methods.spectral import parallel_groups, polar_factor, top_triplets
from paperpack.r_tsvm.methods.tsv import tsv_budget

NUM_EXPERTS = 3
MODES = ("exact", "fast")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def steps(deltas: torch.Tensor, mode: str) -> tuple[dict[str, float], list[float]]:
    """CPU seconds of each step of TSV-M's merge of one matrix on one path (as ``tsv_m_merge`` runs them), and
    each task's truncation error ‖Δ_t − U_t diag(σ_t) V_tᵀ‖_F."""
    seconds = {}
    start = time.process_time()
    parallel_groups(deltas, 1e-3)
    seconds["parallel check"] = time.process_time() - start
    k = tsv_budget(deltas.shape[1:], deltas.shape[0])
    start = time.process_time()
    kept = top_triplets(deltas, [k] * deltas.shape[0], mode)
    seconds["triplets"] = time.process_time() - start
    u = torch.cat([part[0] for part in kept], dim=1)
    vh = torch.cat([part[2] for part in kept], dim=0)
    for name, matrix in ((f"polar U {tuple(u.shape)}", u), (f"polar Vt {tuple(vh.shape)}", vh)):
        start = time.process_time()
        polar_factor(matrix, mode)
        seconds[name] = time.process_time() - start
    errors = [float((delta - (u * s) @ vh).norm()) for delta, (u, s, vh) in zip(deltas, kept, strict=True)]
    return {name: round(value, 2) for name, value in seconds.items()}, errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--methods", nargs="*", default=["tsv_m", "r_tsvm", "iso_cts"])
    parser.add_argument("--rounds", type=int, default=1, help="rounds alternating the order of the paths")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = {"q_proj": (args.hidden, args.hidden), "up_proj": (args.intermediate, args.hidden)}
    g = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        base = torch.randn(*shape, generator=g) * 0.02
        experts = [base + 1e-3 * torch.randn(*shape, generator=g) for _ in range(NUM_EXPERTS)]
        for method in args.methods:
            cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            out = {}
            for round_ in range(args.rounds):
                for svd in MODES if round_ % 2 == 0 else MODES[::-1]:
                    start = time.process_time()
                    out[svd] = merge_tensors(
                        method, base, experts, key=f"model.layers.0.{name}.weight", svd=svd
                    )
                    cpu[svd].append(time.process_time() - start)
            exact, fast = statistics.median(cpu["exact"]), statistics.median(cpu["fast"])
            row = {
                "shape": f"{name} {shape[0]}x{shape[1]}",
                "method": method,
                "cpu_exact": round(exact, 2),
                "cpu_fast": round(fast, 2),
                "ratio": round(exact / fast, 2),
                "max_diff": float((out["fast"] - out["exact"]).abs().max()),
                "load": load(),
            }
            print(json.dumps(row), flush=True)
        deltas = torch.stack([expert - base for expert in experts])
        errors = {}
        for mode in MODES:
            seconds, errors[mode] = steps(deltas, mode)
            print(json.dumps({"shape": f"{name} {shape[0]}x{shape[1]}", "tsv_m steps": mode, **seconds}))
        excess = max(f / e - 1 for f, e in zip(errors["fast"], errors["exact"], strict=True))
        truncation = {"exact": errors["exact"], "fast": errors["fast"], "largest relative excess": excess}
        print(
            json.dumps({"shape": f"{name} {shape[0]}x{shape[1]}", "truncation": truncation, "load": load()})
        )


if __name__ == "__main__":
    main()
