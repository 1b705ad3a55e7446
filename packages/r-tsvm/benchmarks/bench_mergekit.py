"""Streaming merges of a ~2 GB synthetic Llama model and three fine-tunes: paperpack-r-tsvm beside mergekit.

For linear, task arithmetic and TIES, both tools merge the same safetensors files in one run; each merge runs in
its own child process, so wall time and peak resident memory (the kernel's ``ru_maxrss`` of that child, read by
``os.wait4``) are measured the same way for both. Our child also reports the core's ``MemoryMeter`` peak. The
merged tensors are compared key by key. R-TSVM has no mergekit counterpart and is timed alone.

mergekit is LGPL-3.0 and is never a dependency of this package: install it into a separate environment,

    uv venv /tmp/mergekit-env
    VIRTUAL_ENV=/tmp/mergekit-env uv pip install mergekit

and run (from the workspace root)

    uv run --no-sync python packages/r-tsvm/benchmarks/bench_mergekit.py \
        --mergekit /tmp/mergekit-env/bin/mergekit-yaml

Without ``--mergekit`` (or when that path does not exist) the mergekit rows are skipped and only our figures
are printed. The synthetic models are written once into ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from paperpack.core.checkpoints import LazyStateDict, save_state_dict
from paperpack.core.device import format_bytes

NUM_EXPERTS = 3
# (name, mergekit method or None, our parameters, mergekit top-level parameters, mergekit per-model parameters)
CASES = [
    ("linear", "linear", {}, {}, {"weight": 1.0}),
    ("task_arithmetic", "task_arithmetic", {}, {}, {"weight": 1.0}),
    ("ties", "ties", {"density": 0.2}, {}, {"weight": 1.0, "density": 0.2}),
    ("r_tsvm", None, {"exclude_keys": ["embed_tokens", "lm_head"]}, {}, {}),
]


def llama_config(size_gb: float):
    from transformers import LlamaConfig

    # 8 layers of width 2048 and a 32k vocabulary is ~0.54 B parameters: 2.2 GB in float32.
    layers = max(1, round(8 * size_gb / 2.0))
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
        torch_dtype="float32",
        architectures=["LlamaForCausalLM"],
    )


def make_models(workdir: Path, size_gb: float) -> dict[str, Path]:
    """Write the base and the fine-tunes (base + small noise) once; reuse them on later runs."""
    from transformers import LlamaForCausalLM

    folders = {"base": workdir / "base", **{f"expert{i}": workdir / f"expert{i}" for i in range(NUM_EXPERTS)}}
    marker = workdir / f"ready-{size_gb}"
    if marker.exists():
        return folders
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = llama_config(size_gb)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in LlamaForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    base = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    for name, folder in folders.items():
        state = (
            base
            if name == "base"
            else {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
        )
        save_state_dict(state, folder, max_shard_size="500MB")
        config.save_pretrained(folder)
        print(f"wrote {name}: {sum(v.numel() for v in state.values()) / 1e9:.2f} B parameters", flush=True)
    marker.touch()
    return folders


def run_child(command: list[str]) -> tuple[float, int, str]:
    """Run a command; return its wall time, its peak resident memory (bytes) and its stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, out


def worker(recipe: str, output: str) -> None:
    """Child process: one merge with paperpack-r-tsvm, measured with the core's MemoryMeter."""
    from paperpack.core.device import MemoryMeter
    from paperpack.r_tsvm import merge_checkpoints

    with MemoryMeter("cpu") as meter:
        merge_checkpoints(recipe, output, progress=False)
    print(json.dumps({"memory_meter_peak": meter.peak_bytes}))


def max_difference(a: Path, b: Path) -> float:
    left, right = LazyStateDict(a), LazyStateDict(b)
    if set(left) != set(right):
        raise RuntimeError(f"{a} and {b} hold different keys")
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def warm_cache(folders: dict[str, Path]) -> None:
    """Read every input once so that neither tool pays the first cold read."""
    for folder in folders.values():
        for file in folder.glob("*.safetensors"):
            with file.open("rb") as handle:
                while handle.read(1 << 26):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mergekit", default="/tmp/mergekit-env/bin/mergekit-yaml", help="mergekit-yaml path"
    )
    parser.add_argument("--workdir", default="/tmp/rtsvm-bench", help="where models and outputs go")
    parser.add_argument("--size-gb", type=float, default=2.0, help="approximate base model size")
    parser.add_argument("--methods", nargs="+", default=[case[0] for case in CASES])
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    workdir = Path(args.workdir)
    folders = make_models(workdir, args.size_gb)
    mergekit = Path(args.mergekit) if args.mergekit and Path(args.mergekit).exists() else None
    if mergekit is None:
        print(f"mergekit not found at {args.mergekit!r}: mergekit rows skipped (see this script's docstring)")
    warm_cache(folders)
    rows = []
    for name, mk_method, ours, mk_global, mk_model in CASES:
        if name not in args.methods:
            continue
        recipe = {
            "merge_method": name,
            "models": [{"model": str(folders[f"expert{i}"])} for i in range(NUM_EXPERTS)],
            "parameters": ours,
            "max_shard_size": "2GB",
        }
        if name != "linear":  # as in the mergekit recipe: a linear merge needs no base model
            recipe["base_model"] = str(folders["base"])
        recipe_path = workdir / f"{name}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe))
        ours_out = workdir / f"out-ours-{name}"
        shutil.rmtree(ours_out, ignore_errors=True)
        seconds, rss, out = run_child([sys.executable, __file__, "--worker", str(recipe_path), str(ours_out)])
        meter = json.loads(out.strip().splitlines()[-1])["memory_meter_peak"]
        row = {"method": name, "ours_s": seconds, "ours_rss": rss, "ours_meter": meter}
        if mergekit is not None and mk_method is not None:
            mk_recipe = {
                "merge_method": mk_method,
                "models": [
                    {"model": str(folders[f"expert{i}"]), "parameters": dict(mk_model)}
                    for i in range(NUM_EXPERTS)
                ],
                "dtype": "float32",
            }
            if mk_method != "linear":
                mk_recipe["base_model"] = str(folders["base"])
            if mk_global:
                mk_recipe["parameters"] = mk_global
            mk_path = workdir / f"{name}.mergekit.yaml"
            mk_path.write_text(yaml.safe_dump(mk_recipe))
            mk_out = workdir / f"out-mergekit-{name}"
            shutil.rmtree(mk_out, ignore_errors=True)
            row["mk_s"], row["mk_rss"], _ = run_child([str(mergekit), str(mk_path), str(mk_out), "--quiet"])
            row["max_diff"] = max_difference(ours_out, mk_out)
            shutil.rmtree(mk_out)
        shutil.rmtree(ours_out)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    header = [
        "method",
        "ours s",
        "mergekit s",
        "time ratio",
        "ours peak RSS",
        "mergekit RSS",
        "RSS ratio",
        "MemoryMeter",
        "max |diff|",
    ]
    lines = [header]
    for row in rows:
        mk = "mk_s" in row
        lines.append(
            [
                row["method"],
                f"{row['ours_s']:.1f}",
                f"{row['mk_s']:.1f}" if mk else "-",
                f"{row['ours_s'] / row['mk_s']:.2f}" if mk else "-",
                format_bytes(row["ours_rss"]),
                format_bytes(row["mk_rss"]) if mk else "-",
                f"{row['ours_rss'] / row['mk_rss']:.2f}" if mk else "-",
                format_bytes(row["ours_meter"]),
                f"{row['max_diff']:.1e}" if mk else "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
