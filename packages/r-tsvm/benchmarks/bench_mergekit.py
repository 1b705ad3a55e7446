"""Streaming merges of a synthetic Llama model and three fine-tunes: paperpack-r-tsvm beside mergekit.

Both tools merge the same safetensors files in one run, in rounds that alternate the two (medians reported).
Every merge runs in a fresh child process started the same way for both tools (see ``_harness.py``), and its
peak resident memory is that process's own ``VmHWM``: the high-water mark of the process after ``exec``, which
nothing of the parent's leaks into. ``wait4``'s ``ru_maxrss`` is printed beside it as a cross-check (it includes
the parent's high-water mark at fork; the parent here never loads tensors: models are written and compared in
children of their own). Our child also reports the core's ``MemoryMeter`` peak around the merge alone. The
merged tensors are compared key by key. R-TSVM and TSV-M have no mergekit counterpart and are timed alone.

mergekit is LGPL-3.0 and never a dependency of this package: install it into its own environment,

    uv venv /work/venvs/mergekit
    VIRTUAL_ENV=/work/venvs/mergekit uv pip install mergekit

and run (from the workspace root)

    uv run --no-sync python packages/r-tsvm/benchmarks/bench_mergekit.py --mergekit /work/venvs/mergekit/bin/mergekit-yaml

The default model is the 2 GB one (8 layers of width 2048, MLP 5632, 32k vocabulary, untied head); ``--layers``
scales it. Without mergekit only our figures are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml
from _harness import HERE, format_bytes, in_child, load_average, load_json_line, run_measured

NUM_EXPERTS = 3
#: (name, our parameters, mergekit's top-level parameters, mergekit's per-model parameters); None: ours only.
CASES: dict[str, tuple[dict, dict, dict] | tuple[dict, None, None]] = {
    "linear": ({}, {}, {"weight": 1.0}),
    "task_arithmetic": ({}, {}, {"weight": 1.0}),
    "ties": ({"density": 0.2}, {}, {"weight": 1.0, "density": 0.2}),
    "breadcrumbs_ties": ({"density": 0.9, "gamma": 0.01}, {}, {"weight": 1.0, "density": 0.9, "gamma": 0.01}),
    "model_stock": ({}, {}, {}),
    "sce": ({"select_topk": 0.5}, {"select_topk": 0.5}, {}),
    "tsv_m": ({"exclude_keys": ["embed_tokens", "lm_head"]}, None, None),
    "r_tsvm": ({"exclude_keys": ["embed_tokens", "lm_head"]}, None, None),
}


def spec(layers: int) -> dict:
    return {
        "name": f"llama-{layers}",
        "vocab": 32000,
        "hidden": 2048,
        "intermediate": 5632,
        "layers": layers,
        "heads": 16,
        "experts": NUM_EXPERTS,
        "noise": 1e-3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mergekit", default="/work/venvs/mergekit/bin/mergekit-yaml", help="mergekit-yaml path"
    )
    parser.add_argument("--workdir", default="/tmp/rtsvm-bench", help="where models and outputs go")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (8: the 2 GB model)")
    parser.add_argument("--methods", nargs="+", default=[m for m, c in CASES.items() if c[1] is not None])
    parser.add_argument("--rounds", type=int, default=2, help="rounds alternating the two tools")
    args = parser.parse_args()
    workdir = Path(args.workdir) / f"layers-{args.layers}"
    built = load_json_line(in_child("models", str(workdir), json.dumps(spec(args.layers))))
    folders = built["folders"]
    print(
        f"model: {built['parameters'] / 1e9:.3f} B parameters, {built['parameters'] * 4 / 1e9:.2f} GB in float32"
    )
    mergekit = Path(args.mergekit) if Path(args.mergekit).exists() else None
    if mergekit is None:
        print(f"mergekit not found at {args.mergekit!r}: mergekit rows skipped (see this script's docstring)")
    in_child("warm", *folders.values())
    print(f"load average before: {load_average()}", flush=True)
    samples: dict[str, dict[str, list]] = {}
    for round_ in range(args.rounds):
        for name in args.methods:
            ours, mk_global, mk_model = CASES[name]
            recipe = {
                "merge_method": name,
                "models": [{"model": folders[f"expert{i}"]} for i in range(NUM_EXPERTS)],
                "parameters": ours,
                "max_shard_size": "2GB",
            }
            if name != "linear":
                recipe["base_model"] = folders["base"]
            recipe_path = workdir / f"{name}.yaml"
            recipe_path.write_text(yaml.safe_dump(recipe))
            row = samples.setdefault(name, {})
            out = workdir / f"out-ours-{name}"
            shutil.rmtree(out, ignore_errors=True)
            measured = run_measured(
                sys.executable, str(HERE / "_children.py"), ["merge", str(recipe_path), str(out)]
            )
            row.setdefault("ours", []).append(measured)
            row.setdefault("meter", []).append(load_json_line(measured.stdout)["memory_meter_peak"])
            print(
                json.dumps(
                    {
                        "round": round_,
                        "method": name,
                        "tool": "ours",
                        "s": measured.seconds,
                        "vmhwm": measured.peak,
                        "ru_maxrss": measured.maxrss,
                    }
                ),
                flush=True,
            )
            if mergekit is not None and mk_global is not None:
                mk_recipe = {
                    "merge_method": name,
                    "models": [
                        {
                            "model": folders[f"expert{i}"],
                            **({"parameters": dict(mk_model)} if mk_model else {}),
                        }
                        for i in range(NUM_EXPERTS)
                    ],
                    "dtype": "float32",
                    **({"parameters": mk_global} if mk_global else {}),
                }
                if name != "linear":
                    mk_recipe["base_model"] = folders["base"]
                mk_path = workdir / f"{name}.mergekit.yaml"
                mk_path.write_text(yaml.safe_dump(mk_recipe))
                mk_out = workdir / f"out-mergekit-{name}"
                shutil.rmtree(mk_out, ignore_errors=True)
                python = str(mergekit.parent / "python")
                measured = run_measured(python, str(mergekit), [str(mk_path), str(mk_out), "--quiet"])
                row.setdefault("mergekit", []).append(measured)
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "method": name,
                            "tool": "mergekit",
                            "s": measured.seconds,
                            "vmhwm": measured.peak,
                            "ru_maxrss": measured.maxrss,
                        }
                    ),
                    flush=True,
                )
                if round_ == 0:
                    compared = load_json_line(in_child("compare", str(out), str(mk_out)))
                    row["diff"] = compared["max_diff"]
                shutil.rmtree(mk_out)
            shutil.rmtree(out)
    print(f"load average after: {load_average()}")
    print_table(samples)


def print_table(samples: dict[str, dict[str, list]]) -> None:
    def median(values: list) -> float:
        return statistics.median(values)

    print()
    print(
        "| method | ours (s) | mergekit (s) | time ratio | ours peak RSS | mergekit peak RSS | RSS ratio "
        "| MemoryMeter (ours, merge only) | ru_maxrss ours / mergekit | max \\|ours − mergekit\\| |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in samples.items():
        ours = row["ours"]
        s, peak, maxrss = (
            median([m.seconds for m in ours]),
            median([m.peak for m in ours]),
            median([m.maxrss for m in ours]),
        )
        cells = [name, f"{s:.1f}"]
        if "mergekit" in row:
            mk = row["mergekit"]
            mk_s, mk_peak = median([m.seconds for m in mk]), median([m.peak for m in mk])
            mk_maxrss = median([m.maxrss for m in mk])
            cells += [
                f"{mk_s:.1f}",
                f"{s / mk_s:.2f}",
                format_bytes(peak),
                format_bytes(mk_peak),
                f"{peak / mk_peak:.2f}",
            ]
            cells += [
                format_bytes(median(row["meter"])),
                f"{format_bytes(maxrss)} / {format_bytes(mk_maxrss)}",
            ]
            cells += [f"{row.get('diff', float('nan')):.1e}"]
        else:
            cells += [
                "-",
                "-",
                format_bytes(peak),
                "-",
                "-",
                format_bytes(median(row["meter"])),
                format_bytes(maxrss),
                "-",
            ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
