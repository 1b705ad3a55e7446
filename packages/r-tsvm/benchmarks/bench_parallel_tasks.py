"""How stable TSV-M, R-TSVM, Iso-C and Iso-CTS are when the experts are (nearly) identical.

Three experts θ_0 + Δ + s·z_t (z_t Gaussian noise at Δ's scale, 48 × 40 matrices) are merged in float64 and in
float32, and again after a 1e-9 relative nudge of the experts, for spreads s from 0 to 0.1, with the rule for
parallel task matrices (``parallel_tol`` 1e-3, the default) and with only exactly parallel ones merged (0). The
figures are relative to the merged task matrix. Run from the workspace root:

    uv run --no-sync python packages/r-tsvm/benchmarks/bench_parallel_tasks.py
"""

from __future__ import annotations

import torch

from paperpack.r_tsvm import merge_tensors

SPREADS = (0.0, 1e-12, 1e-8, 1e-6, 1e-4, 5e-4, 2e-3, 1e-2, 1e-1)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(48, 40, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(48, 40, generator=g, dtype=torch.float64)
    noise = [torch.randn(48, 40, generator=g, dtype=torch.float64) for _ in range(3)]
    nudge = [torch.randn(48, 40, generator=g, dtype=torch.float64) for _ in range(3)]
    print("| method | svd | parallel_tol | " + " | ".join(f"s = {s:g}" for s in SPREADS) + " |")
    print("|---|---|---|" + "---|" * len(SPREADS))
    for method in ("tsv_m", "r_tsvm", "iso_cts", "iso_c"):
        for svd in ("exact", "fast"):
            for tolerance in (1e-3, 0.0):
                if method == "iso_c" and tolerance == 0.0:
                    continue
                cells = []
                for spread in SPREADS:
                    models = [base + delta + spread * 0.1 * z for z in noise]
                    params: dict[str, object] = {"key": "w", "svd": svd}
                    if method != "iso_c":
                        params["parallel_tol"] = tolerance
                    if method == "r_tsvm":
                        params.update(outlier_mode="none", rank_mode="fixed")
                    in64 = merge_tensors(method, base, models, **params)
                    in32 = merge_tensors(method, base.float(), [m.float() for m in models], **params).double()
                    nudged = [m + 1e-9 * 0.1 * z for m, z in zip(models, nudge, strict=True)]
                    moved = merge_tensors(method, base, nudged, **params)
                    scale = float((in64 - base).norm())
                    cells.append(
                        f"{float((in32 - in64).norm()) / scale:.0e} / {float((moved - in64).norm()) / scale:.0e}"
                    )
                print(f"| {method} | {svd} | {tolerance:g} | " + " | ".join(cells) + " |")
    print("\nEach cell: float32 vs float64 / effect of a 1e-9 nudge, relative to the merged task matrix.")


if __name__ == "__main__":
    main()
