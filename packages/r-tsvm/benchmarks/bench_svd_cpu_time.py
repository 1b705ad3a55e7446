"""CPU time of one matrix's TSV-M, R-TSVM and Iso-CTS merge, ``svd: exact`` against ``svd: fast``, one thread.

Process CPU time (``time.process_time``), unlike wall time, hardly moves with the load of a shared machine.
Three experts (base + 1e-3 noise) of the decoder's two matrix shapes at the default size of
``bench_fast_svd.py`` (1024 x 1024 attention, 2816 x 1024 MLP); prints the ratio exact / fast and the largest
difference of the merged tensors. Run from the workspace root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_svd_cpu_time.py
"""

from __future__ import annotations

import json
import time

import torch

from paperpack.r_tsvm import merge_tensors

SHAPES = {"q_proj": (1024, 1024), "up_proj": (2816, 1024)}


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for name, shape in SHAPES.items():
        base = torch.randn(*shape, generator=g) * 0.02
        experts = [base + 1e-3 * torch.randn(*shape, generator=g) for _ in range(3)]
        for method in ("tsv_m", "r_tsvm", "iso_cts"):
            cpu, out = {}, {}
            for svd in ("exact", "fast"):
                start = time.process_time()
                out[svd] = merge_tensors(method, base, experts, key=f"model.layers.0.{name}.weight", svd=svd)
                cpu[svd] = time.process_time() - start
            row = {
                "shape": f"{name} {shape[0]}x{shape[1]}",
                "method": method,
                "cpu_exact": round(cpu["exact"], 2),
                "cpu_fast": round(cpu["fast"], 2),
                "ratio": round(cpu["exact"] / cpu["fast"], 2),
                "max_diff": float((out["fast"] - out["exact"]).abs().max()),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
