"""Persistent state, peak memory and step time of every zeroth-order method, side by side.

The model is the core's ``benchmark_llama()``: a Llama of about 58M parameters built from a config (random
weights, nothing downloaded).
Each method runs in two subprocesses of its own, each building the model and the optimizer and stepping on a
fixed random batch: one measures memory, one time (``--steps`` timed steps after a warm-up step).

Memory: torch and transformers are imported before measuring (their ~0.2 GiB of code and data is the same for
every method and is not the method's memory). One meter covers building the model and the optimizer; after a
warm-up step (the first forward pass also loads kernels and thread pools), a second meter covers two steps.
The peak is the larger of the two peaks above the memory in use before the model was built. On the CPU the
meter reads the process's resident set size; the memory subprocess sets glibc's ``MALLOC_MMAP_THRESHOLD_`` to
64 KiB, so freed blocks go back to the system and the resident set follows the live tensors (as CUDA's
allocated-memory counter does) instead of heap fragmentation. The timing subprocess keeps the default
allocator.

Loss (the same for every method; only the loss is needed, never the logits):
- ``hf``: ``model(input_ids, labels, use_cache=False).loss``, what ``ZOTrainer`` computes through
  ``compute_loss``: the full logits (batch x tokens x vocabulary) and their log-softmax exist at once.
- ``chunked``: the decoder's hidden states, then the LM head and the cross-entropy on ``--loss-chunk`` tokens
  at a time, summed: the same loss without a full-vocabulary tensor.

Columns:
- persistent: ``zo_state_bytes`` (optimizer state kept between steps: moments, cached factors).
- peak: weights + persistent state + activations + transients, as above.
- step: median wall time of one optimizer step (two forward passes, perturbations, update).
- ZO overhead: the same minus the time spent inside the two loss evaluations, i.e. what the method itself
  costs (drawing, perturbing, restoring, updating); less sensitive to the forward pass and to machine load.
Ratios are against MeZO-Adam, measured in the same run.

Usage:
    python packages/tezo/benchmarks/bench_memory_time.py [--device auto] [--steps 3] [--batch 8] [--seq 64]
        [--loss hf|chunked] [--memory-only] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

METHODS = [
    ("mezo_sgd", {}),
    ("mezo_momentum", {}),
    ("mezo_adam", {}),
    ("tezo_sgd", {}),
    ("tezo_momentum", {}),
    ("tezo_adam", {}),
    ("tezo_adam", {"cache_factors": False}),
    ("lozo", {}),
]


def build_model(device: str):  # type: ignore[no-untyped-def]
    from paperpack.core.hf import benchmark_llama

    return benchmark_llama(seed=0).to(device).eval()


def chunked_loss(model, input_ids, chunk: int):  # type: ignore[no-untyped-def]
    """Mean next-token cross-entropy, the LM head applied to ``chunk`` tokens at a time."""
    from torch.nn import functional

    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    total = hidden.new_zeros((), dtype=hidden.dtype)
    for start in range(0, targets.numel(), chunk):
        logits = model.lm_head(hidden[start : start + chunk]).float()
        total += functional.cross_entropy(logits, targets[start : start + chunk], reduction="sum")
    return total / targets.numel()


def worker(args: argparse.Namespace) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before the meters)

    from paperpack.core.device import MemoryMeter, resolve_device
    from paperpack.tezo import ZOOptimizer, zo_state_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = json.loads(args.options)
    generator = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 32000, (args.batch, args.seq), generator=generator).to(device)
    times: list[float] = []
    overheads: list[float] = []
    forward_time = [0.0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with MemoryMeter(device) as setup:
        model = build_model(str(device))
        params = sum(p.numel() for p in model.parameters())
        opt = ZOOptimizer(
            model.parameters(), method=args.worker, lr=1e-6, eps=1e-3, rank=8, seed=0, **options
        )
    with MemoryMeter(device) as resident:  # weights + state, read before any forward pass
        pass

    def closure():  # type: ignore[no-untyped-def]
        sync()
        start = time.perf_counter()
        if args.loss == "chunked":
            loss = chunked_loss(model, batch, args.loss_chunk)
        else:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        sync()
        forward_time[0] += time.perf_counter() - start
        return loss

    opt.step(closure)  # warm-up: not timed, not metered
    with MemoryMeter(device) as steady:
        for _ in range(args.steps if args.measure == "time" else 2):
            forward_time[0] = 0.0
            sync()
            start = time.perf_counter()
            opt.step(closure)
            sync()
            times.append(time.perf_counter() - start)
            overheads.append(times[-1] - forward_time[0])
    result = {
        "params": params,
        "persistent": zo_state_bytes(opt),
        "peak": max(setup.growth_bytes, resident.start_bytes - setup.start_bytes + steady.growth_bytes),
        "retained": steady.start_bytes - resident.start_bytes,
        "step_s": statistics.median(times),
        "overhead_s": statistics.median(overheads),
        "device": str(device),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--loss", choices=("hf", "chunked"), default="hf", help="how the loss is computed")
    parser.add_argument(
        "--loss-chunk", type=int, default=128, help="tokens per LM-head chunk (--loss chunked)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--methods", nargs="+", default=None, help="only these methods (mezo_adam is always run)"
    )
    parser.add_argument("--memory-only", action="store_true", help="skip the timing subprocesses")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    chosen = [(m, o) for m, o in METHODS if args.methods is None or m in args.methods or m == "mezo_adam"]
    for method, options in chosen:
        result = {"step_s": math.nan, "overhead_s": math.nan}
        for measure in ("memory",) if args.memory_only else ("memory", "time"):
            command = [
                sys.executable, __file__, "--worker", method, "--measure", measure, "--options", json.dumps(options),
                "--device", args.device, "--steps", str(args.steps), "--batch", str(args.batch),
                "--seq", str(args.seq), "--threads", str(args.threads), "--loss", args.loss,
                "--loss-chunk", str(args.loss_chunk),
            ]  # fmt: skip
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if measure == "memory" else None
            output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            measured = json.loads(output.strip().splitlines()[-1])
            keys = (
                ("params", "persistent", "peak", "retained", "device")
                if measure == "memory"
                else ("step_s", "overhead_s")
            )
            result.update({key: measured[key] for key in keys})
        label = method + ("" if not options else " (regenerated U, V)")
        rows.append((label, result))
        print(f"  {label}: {json.dumps(result)}", file=sys.stderr, flush=True)  # survives a timeout
    base = dict(rows)["mezo_adam"]
    mib = 2**20
    print(
        f"\n{rows[0][1]['params'] / 1e6:.1f}M-parameter Llama, batch {args.batch} x {args.seq} tokens, "
        f"device {base['device']}, rank 8, loss {args.loss}, "
        + ("memory only" if args.memory_only else f"times: median of {args.steps} steps")
        + f"; left resident by the warm-up step, not counted: {base['retained'] / 2**20:.0f} MiB\n"
    )
    header = (
        "| method | persistent MiB | vs MeZO-Adam | peak MiB | vs MeZO-Adam | step s | vs MeZO-Adam "
        "| ZO overhead s | vs MeZO-Adam |"
    )
    print(header)
    print("|" + "---|" * 9)
    for label, r in rows:
        print(
            f"| {label} | {r['persistent'] / mib:.1f} | {r['persistent'] / base['persistent']:.3f} "
            f"| {r['peak'] / mib:.0f} | {r['peak'] / base['peak']:.3f} "
            f"| {r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f} "
            f"| {r['overhead_s']:.3f} | {r['overhead_s'] / base['overhead_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
