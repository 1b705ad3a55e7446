"""TSV-M, R-TSVM and Iso-CTS on checkpoints: the fast spectral path beside the exact one.

A synthetic Llama base and three fine-tunes (base + 1e-3 noise) are merged with ``svd: fast`` and ``svd: exact``
(``exclude_keys: [embed_tokens, lm_head]``, as for an LLM), in rounds that alternate the two paths, each merge
in a fresh child process (medians reported, with each child's own peak RSS). Then, for every decomposed matrix
and task, the truncation error ‖Δ_t − Δ_t,k‖_F of both paths at TSV-M's rank k = ⌊r/T⌋ is compared (the
largest excess of the fast path over the exact one is printed), and the two merged models are compared key by
key. ``--torch-lapack`` adds a third arm, the fast path on torch's eigendecompositions and SVDs instead of
SciPy's LAPACK (as it runs off the CPU), to show what the library choice contributes.

    uv run --no-sync python packages/r-tsvm/benchmarks/bench_fast_svd.py --layers 8 --hidden 2048 \\
        --intermediate 5632 --methods tsv_m --rounds 1      # the 2 GB model
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml
from _harness import HERE, format_bytes, in_child, llama_spec, load_average, load_json_line, run_measured

NUM_EXPERTS = 3
EXCLUDE = ["embed_tokens", "lm_head"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="/tmp/rtsvm-bench", help="where models and outputs go")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--methods", nargs="+", default=["tsv_m", "r_tsvm", "iso_cts"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--torch-lapack",
        action="store_true",
        help="add a third arm: the fast path on torch's eigendecompositions and SVDs instead of SciPy's",
    )
    parser.add_argument(
        "--skip-truncation", action="store_true", help="skip the per-matrix truncation errors"
    )
    args = parser.parse_args()
    spec = llama_spec(args.layers, args.hidden, args.intermediate, args.vocab, NUM_EXPERTS)
    workdir = Path(args.workdir) / spec["name"]
    built = load_json_line(in_child("models", str(workdir), json.dumps(spec)))
    folders = built["folders"]
    print(
        f"model {spec['name']}: {built['parameters'] / 1e9:.3f} B parameters ({built['parameters'] * 4 / 1e9:.2f} GB)"
    )
    in_child("warm", *folders.values())
    print(f"load average before: {load_average()}", flush=True)
    samples: dict[str, dict[str, list]] = {}
    for round_ in range(args.rounds):
        for method in args.methods:
            arms = ("exact", "fast", "fast-torch") if args.torch_lapack else ("exact", "fast")
            for arm in arms if round_ % 2 == 0 else arms[::-1]:
                svd = arm.removesuffix("-torch")
                recipe = {
                    "merge_method": method,
                    "base_model": folders["base"],
                    "models": [{"model": folders[f"expert{i}"]} for i in range(NUM_EXPERTS)],
                    "parameters": {"exclude_keys": EXCLUDE, "svd": svd},
                    "max_shard_size": "2GB",
                }
                path = workdir / f"{method}-{svd}.yaml"
                path.write_text(yaml.safe_dump(recipe))
                out = workdir / f"out-{method}-{arm}"
                shutil.rmtree(out, ignore_errors=True)
                lapack = "torch" if arm.endswith("-torch") else "scipy"
                measured = run_measured(
                    sys.executable, str(HERE / "_children.py"), ["merge", str(path), str(out), lapack]
                )
                samples.setdefault(method, {}).setdefault(arm, []).append(measured)
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "method": method,
                            "svd": arm,
                            "s": round(measured.seconds, 1),
                            "cpu_s": round(measured.cpu, 1),
                            "vmhwm": measured.peak,
                            "load": load_average(),
                        }
                    ),
                    flush=True,
                )
            if round_ == 0:
                compared = load_json_line(
                    in_child(
                        "compare", str(workdir / f"out-{method}-fast"), str(workdir / f"out-{method}-exact")
                    )
                )
                samples[method]["diff"] = [compared["max_diff"], compared["worst_key"]]
                print(
                    json.dumps(
                        {"method": method, "max_diff": compared["max_diff"], "key": compared["worst_key"]}
                    )
                )
                if args.torch_lapack:
                    compared = load_json_line(
                        in_child(
                            "compare",
                            str(workdir / f"out-{method}-fast-torch"),
                            str(workdir / f"out-{method}-exact"),
                        )
                    )
                    samples[method]["diff-torch"] = [compared["max_diff"], compared["worst_key"]]
            for arm in arms:
                shutil.rmtree(workdir / f"out-{method}-{arm}", ignore_errors=True)
    truncation = None
    if not args.skip_truncation:
        truncation = load_json_line(
            in_child("truncation", str(workdir), json.dumps({"experts": NUM_EXPERTS, "exclude": EXCLUDE}))
        )
    print(f"load average after: {load_average()}")
    print_tables(samples, truncation, args.torch_lapack)


def print_tables(samples: dict[str, dict[str, list]], truncation: dict | None, torch_lapack: bool) -> None:
    """The Markdown tables: exact beside fast (and beside the fast path on torch's LAPACK), truncation."""
    print()
    print(
        "| method | exact (s) | fast (s) | exact / fast | exact (CPU s) | fast (CPU s) | exact / fast (CPU) "
        "| peak RSS exact | peak RSS fast | max \\|fast − exact\\| |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, row in samples.items():
        exact = statistics.median(m.seconds for m in row["exact"])
        fast = statistics.median(m.seconds for m in row["fast"])
        cpu_exact = statistics.median(m.cpu for m in row["exact"])
        cpu_fast = statistics.median(m.cpu for m in row["fast"])
        peaks = [statistics.median(m.peak for m in row[svd]) for svd in ("exact", "fast")]
        diff = row["diff"]
        print(
            f"| {method} | {exact:.1f} | {fast:.1f} | {exact / fast:.2f} | {cpu_exact:.1f} | {cpu_fast:.1f} "
            f"| {cpu_exact / cpu_fast:.2f} | {format_bytes(peaks[0])} "
            f"| {format_bytes(peaks[1])} | {diff[0]:.1e} ({diff[1]}) |"
        )
    if torch_lapack:
        print(
            "\n| method | fast on torch's LAPACK (s) | exact / that | its CPU s | exact / that (CPU) "
            "| fast on torch / fast (CPU) | max \\|that − exact\\| |"
        )
        print("|---|---|---|---|---|---|---|")
        for method, row in samples.items():
            wall = {
                arm: statistics.median(m.seconds for m in row[arm]) for arm in ("exact", "fast", "fast-torch")
            }
            cpu = {arm: statistics.median(m.cpu for m in row[arm]) for arm in ("exact", "fast", "fast-torch")}
            diff = row["diff-torch"]
            print(
                f"| {method} | {wall['fast-torch']:.1f} | {wall['exact'] / wall['fast-torch']:.2f} "
                f"| {cpu['fast-torch']:.1f} | {cpu['exact'] / cpu['fast-torch']:.2f} "
                f"| {cpu['fast-torch'] / cpu['fast']:.2f} | {diff[0]:.1e} ({diff[1]}) |"
            )
    if truncation is not None:
        worst = truncation["worst"]
        print(
            f"\ntruncation error, {truncation['matrices_x_tasks']} (matrix, task) pairs: the fast path's largest "
            f"excess over the exact one is {worst['relative_excess']:.2e} (relative; {worst.get('key')}, task "
            f"{worst.get('task')}: {worst.get('fast', 0):.6g} against {worst.get('exact', 0):.6g})"
        )


if __name__ == "__main__":
    main()
