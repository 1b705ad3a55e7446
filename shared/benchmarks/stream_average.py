"""Benchmark: averaging three checkpoints with `stream_state_dicts` vs a plain safetensors load-all-then-save.

Each approach runs in its own fresh process (so peak resident memory is its own), alternating, `--repeats`
times; the table reports the median wall time and peak resident-memory growth (core `MemoryMeter`) and the
ratios streaming / plain, measured side by side in one run.

    uv run python shared/benchmarks/stream_average.py --size-gb 1 --shard-mb 300

`--arms` adds variants of the streaming average, measured in the same rounds: `no-fsync` (the output is not
flushed to the disk before it is moved into place), `pread` (inputs opened with `mmap=False`: every tensor
read into memory it owns instead of large ones being mapped), and `baseline` (the `paperpack.core` found in `--baseline-src`, e.g. an export
of main's `shared/src`, to compare two versions).
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_streaming(inputs: list[Path], output: Path, shard_mb: int, mmap: bool = True) -> None:
    # the default maps large tensors; mmap=False is passed only where asked, so a baseline without it runs too
    states = inputs if mmap else [LazyStateDict(path, mmap=False) for path in inputs]
    stream_state_dicts(states, average, output, max_shard_size=f"{shard_mb}MB", progress=False)


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
    if mode == "no-fsync":
        from paperpack.core import files
        from paperpack.core.checkpoints import writer

        files._fsync_path = lambda path: None
        writer._flush_and_close = os.close
    with MemoryMeter("cpu") as meter:
        started = time.perf_counter()
        paths = [Path(p) for p in inputs]
        if mode == "plain":
            run_plain(paths, Path(output), shard_mb)
        else:
            run_streaming(paths, Path(output), shard_mb, mmap=mode != "pread")
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "growth": meter.growth_bytes, "peak": meter.peak_bytes}))


def measure(
    mode: str, inputs: list[Path], root: Path, shard_mb: int, baseline_src: str | None = None
) -> dict[str, float]:
    output = root / f"out-{mode}"
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ)
    if mode == "baseline":
        assert baseline_src is not None
        env["PYTHONPATH"] = os.pathsep.join([baseline_src, env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        __file__,
        "--child",
        "streaming" if mode == "baseline" else mode,
        "--shard-mb",
        str(shard_mb),
        "--output",
        str(output),
    ]
    result = subprocess.run(
        [*command, *map(str, inputs)], capture_output=True, text=True, check=True, env=env
    )
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
    parser.add_argument(
        "--arms",
        default="",
        help="comma-separated streaming variants to add: no-fsync, pread, baseline (needs --baseline-src)",
    )
    parser.add_argument("--baseline-src", help="a folder holding another version's paperpack/core")
    parser.add_argument(
        "--child", choices=["streaming", "plain", "no-fsync", "pread"], help=argparse.SUPPRESS
    )
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.inputs, args.output, args.shard_mb)
        return
    arms = ["plain", "streaming", *filter(None, args.arms.split(","))]
    unknown = set(arms) - {"plain", "streaming", "no-fsync", "pread", "baseline"}
    if unknown or ("baseline" in arms and not args.baseline_src):
        parser.error(f"--arms: unknown {sorted(unknown)}, or baseline without --baseline-src")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="paperpack-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        inputs = make_inputs(root, args.size_gb, args.shard_mb)
        total = sum(file.stat().st_size for folder in inputs for file in folder.iterdir())
        results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
        for round_ in range(args.repeats):
            # rotate the order each round, so that no arm always runs first (cold) or after the same one
            for mode in arms[round_ % len(arms) :] + arms[: round_ % len(arms)]:
                results[mode].append(measure(mode, inputs, root, args.shard_mb, args.baseline_src))
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
    print(
        f"{'approach':<12} {'median time (s)':>16} {'median peak RSS growth':>24} "
        f"{'time / streaming, paired by round: median [min, max]':>54}"
    )
    for mode in arms:
        paired = sorted(
            run["seconds"] / base["seconds"]
            for run, base in zip(results[mode], results["streaming"], strict=True)
        )
        spread = f"{statistics.median(paired):.3f} [{paired[0]:.3f}, {paired[-1]:.3f}]"
        print(
            f"{mode:<12} {median[mode]['seconds']:>16.2f} {format_bytes(median[mode]['growth']):>24} "
            f"{spread:>54}"
        )
    print("times of every round (s):")
    for mode in arms:
        print(f"  {mode:<12} " + " ".join(f"{run['seconds']:.2f}" for run in results[mode]))
    time_ratio = median["streaming"]["seconds"] / median["plain"]["seconds"]
    memory_ratio = median["streaming"]["growth"] / median["plain"]["growth"]
    print(
        f"ratio streaming / plain: time {time_ratio:.2f} (target <= 1.2), memory growth {memory_ratio:.3f} (target < 0.25)"
    )


if __name__ == "__main__":
    main()
