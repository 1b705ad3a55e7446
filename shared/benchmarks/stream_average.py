"""Benchmark: averaging three checkpoints with `stream_state_dicts` vs a plain safetensors load-all-then-save.

Each approach runs in its own fresh process (so peak resident memory is its own), alternating, `--repeats`
times; the table reports the median wall time and peak resident-memory growth (core `MemoryMeter`) and the
ratios streaming / plain, measured side by side in one run.

    uv run python shared/benchmarks/stream_average.py --size-gb 1 --shard-mb 300
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from paperpack.core.checkpoints import LazyStateDict, save_state_dict, stream_state_dicts
from paperpack.core.device import MemoryMeter, format_bytes

ROWS, COLS = 2048, 4096  # 32 MiB float32 tensors


def make_inputs(root: Path, size_gb: float, shard_mb: int) -> list[Path]:
    tensor_bytes = ROWS * COLS * 4
    count = max(1, int(size_gb * 2**30 // tensor_bytes))
    paths = []
    for index in range(3):
        generator = torch.Generator().manual_seed(index)
        state = {f"layers.{i}.weight": torch.randn(ROWS, COLS, generator=generator) for i in range(count)}
        paths.append(save_state_dict(state, root / f"input{index}", max_shard_size=f"{shard_mb}MB"))
        del state
    return paths


def average(key: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors).mean(0)


def run_streaming(inputs: list[Path], output: Path, shard_mb: int) -> None:
    stream_state_dicts(inputs, average, output, max_shard_size=f"{shard_mb}MB", progress=False)


def run_plain(inputs: list[Path], output: Path, shard_mb: int) -> None:
    states = []
    for folder in inputs:
        state: dict[str, torch.Tensor] = {}
        for file in LazyStateDict(folder).files:
            state.update(load_file(file))
        states.append(state)
    averaged = {key: average(key, [state[key] for state in states]) for key in states[0]}
    output.mkdir()
    shard: dict[str, torch.Tensor] = {}
    size, number = 0, 0
    for key, tensor in averaged.items():
        if shard and size + tensor.numel() * 4 > shard_mb * 10**6:
            save_file(shard, output / f"model-{number:05d}.safetensors", metadata={"format": "pt"})
            shard, size, number = {}, 0, number + 1
        shard[key] = tensor
        size += tensor.numel() * 4
    save_file(shard, output / f"model-{number:05d}.safetensors", metadata={"format": "pt"})


def child(mode: str, inputs: list[str], output: str, shard_mb: int) -> None:
    runner = run_streaming if mode == "streaming" else run_plain
    with MemoryMeter("cpu") as meter:
        started = time.perf_counter()
        runner([Path(p) for p in inputs], Path(output), shard_mb)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "growth": meter.growth_bytes, "peak": meter.peak_bytes}))


def measure(mode: str, inputs: list[Path], root: Path, shard_mb: int) -> dict[str, float]:
    output = root / f"out-{mode}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--shard-mb",
        str(shard_mb),
        "--output",
        str(output),
    ]
    result = subprocess.run([*command, *map(str, inputs)], capture_output=True, text=True, check=True)
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each input checkpoint")
    parser.add_argument("--shard-mb", type=int, default=300, help="shard size of inputs and outputs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", default=None, help="folder for the synthetic checkpoints (default: temp)"
    )
    parser.add_argument("--child", choices=["streaming", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.inputs, args.output, args.shard_mb)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="paperpack-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        inputs = make_inputs(root, args.size_gb, args.shard_mb)
        total = sum(file.stat().st_size for folder in inputs for file in folder.iterdir())
        results: dict[str, list[dict[str, float]]] = {"streaming": [], "plain": []}
        for _ in range(args.repeats):
            for mode in ("plain", "streaming"):
                results[mode].append(measure(mode, inputs, root, args.shard_mb))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {
        mode: {field: statistics.median(run[field] for run in runs) for field in ("seconds", "growth")}
        for mode, runs in results.items()
    }
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"inputs: 3 checkpoints, {format_bytes(total / 3)} each, {args.shard_mb} MB shards; {args.repeats} repeats"
    )
    print(f"{'approach':<12} {'median time (s)':>16} {'median peak RSS growth':>24}")
    for mode in ("plain", "streaming"):
        print(f"{mode:<12} {median[mode]['seconds']:>16.2f} {format_bytes(median[mode]['growth']):>24}")
    time_ratio = median["streaming"]["seconds"] / median["plain"]["seconds"]
    memory_ratio = median["streaming"]["growth"] / median["plain"]["growth"]
    print(
        f"ratio streaming / plain: time {time_ratio:.2f} (target <= 1.2), memory growth {memory_ratio:.3f} (target < 0.25)"
    )


if __name__ == "__main__":
    main()
