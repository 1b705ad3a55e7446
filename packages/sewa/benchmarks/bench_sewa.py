"""SeWA's costs against issue 14's targets, measured side by side in one run (not a test).

1. Selection overhead on the demo's MLP: the default search (K = 30, k = 5, I = 100, M = 4, one minibatch of
   128 training examples per Monte Carlo sample) against the same number (I × M = 400) of plain forward and
   backward passes of the model on the same 400 minibatches. Target: at most 1.5.
2. Selection overhead on a Llama of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key-value heads,
   intermediate 1536, vocabulary 49152, tied embeddings; random weights) with LoRA r = 8 on PEFT's default
   targets: a window of 8 adapter snapshots, the search against the same number of plain forward and backward
   passes of the LoRA model on the same minibatches, both in eval mode (as SeWACallback searches). Target: at
   most 1.2.
3. Snapshot memory on that shape: SeWACallback's snapshot of the LoRA r = 8 model (the adapters) against its
   snapshot of the fully fine-tuned model (every parameter), in tensor bytes and in the resident memory a
   window of them adds (MemoryMeter). Target: under 1 %.

Each timed row is the median of ``--repeats`` rounds; a round times every row of its table once, in turn, so
that a change of the machine's load reaches all rows alike.

Usage (from the workspace root):
    OMP_NUM_THREADS=1 uv run --no-sync python packages/sewa/benchmarks/bench_sewa.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from paperpack.core.device import MemoryMeter, format_bytes
from paperpack.sewa import SeWAConfig, select_snapshots
from paperpack.sewa.callback import snapshot_state
from paperpack.sewa.experiment import ExperimentSettings, train_trajectory
from paperpack.sewa.loss import model_loss
from paperpack.sewa.store import SnapshotStore

SMOLLM2_135M_SHAPE = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
}


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """CPU seconds of this process for every call of each function over ``repeats`` rounds, each round calling
    each function once. CPU time, not wall time: on a shared machine a process waits for a core, and the wait
    would count against whichever row happened to run then (the wall times are printed beside them)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    walls: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            started, wall = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.process_time() - started)
            walls[name].append(time.perf_counter() - wall)
    for name in fns:
        print(f"  wall time of {name[:60]}...: median {statistics.median(walls[name]) * 1000:.1f} ms")
    return times


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def overhead_table(title: str, times: dict[str, list[float]], baseline: str, target: float) -> None:
    base = statistics.median(times[baseline])
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        spread = f"{min(seconds) / base:.2f} to {max(seconds) / base:.2f}"
        rows.append([name, f"{median * 1000:.1f} ms", f"{median / base:.2f}", spread])
    table(title, ["what", "median time", "ratio to the plain passes", "range of ratios over rounds"], rows)
    search = next(name for name in times if name.startswith("SeWA"))
    ratio = statistics.median(times[search]) / base
    print(f"selection overhead {ratio:.2f} (target <= {target}): {'met' if ratio <= target else 'NOT met'}")


def cycle(items: list[object]) -> Iterator[object]:
    while True:
        yield from items


def mlp_overhead(repeats: int) -> None:
    settings = ExperimentSettings()
    run = train_trajectory(0, settings)
    model, train = run.model, run.train
    config = SeWAConfig(k=settings.k, iterations=settings.iterations, mc_samples=settings.mc_samples)
    calls = config.iterations * config.mc_samples
    generator = torch.Generator().manual_seed(0)
    minibatches = []
    for _ in range(calls):
        index = torch.randint(0, len(train.y), (settings.selection_batch,), generator=generator)
        minibatches.append((train.x[index], train.y[index]))
    params = {key: value.clone().requires_grad_(True) for key, value in run.snapshots[-1].items()}

    def plain() -> None:
        for x, y in minibatches:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

    def functional() -> None:
        for x, y in minibatches:
            loss = nn.functional.cross_entropy(functional_call(model, params, (x,), tie_weights=False), y)
            torch.autograd.grad(loss, list(params.values()))

    def search() -> None:
        batches = iter(minibatches)

        def loss_fn(averaged: dict[str, Tensor]) -> Tensor:  # the demo's F, on the same minibatches
            x, y = next(batches)
            return nn.functional.cross_entropy(functional_call(model, averaged, (x,), tie_weights=False), y)

        select_snapshots(run.snapshots, loss_fn, config)  # type: ignore[arg-type]

    def bookkeeping() -> None:
        # The same search with a loss that touches the averages but runs no network: what an iteration costs
        # whatever the model (the M averages and their contraction with the window, the mask, its gradient,
        # Adam, the projection, the autograd calls).
        select_snapshots(run.snapshots, lambda averaged: sum(v.sum() for v in averaged.values()), config)  # type: ignore[arg-type, return-value]

    fns: dict[str, Callable[[], object]] = {
        f"{calls} plain forward + backward passes (the module's own parameters)": plain,
        f"{calls} functional passes (functional_call forward, gradients to the parameters)": functional,
        f"SeWA default search (K={len(run.snapshots)}, k={config.k}, I={config.iterations}, "
        f"M={config.mc_samples})": search,
        "the same search with a loss that runs no network (its own work)": bookkeeping,
    }
    times = interleaved_seconds(fns, repeats)
    overhead_table(
        f"1. Selection overhead on the demo's MLP 64-128-10 (minibatches of {settings.selection_batch}; "
        f"median of {repeats} interleaved rounds)",
        times,
        next(iter(fns)),
        1.5,
    )


def smollm2_shaped_models() -> tuple[nn.Module, nn.Module]:
    """The random-weight Llama of SmolLM2-135M's shape, and a LoRA r = 8 model on a second copy of it."""
    torch.manual_seed(0)
    full = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE))
    torch.manual_seed(0)
    lora = get_peft_model(LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)), LoraConfig(r=8, lora_alpha=16))
    return full, lora


def llama_overhead(model: nn.Module, repeats: int, iterations: int, tokens: tuple[int, int]) -> None:
    config = SeWAConfig(k=3, iterations=iterations, mc_samples=2)
    calls = config.iterations * config.mc_samples
    generator = torch.Generator().manual_seed(0)
    minibatches = []
    for _ in range(calls):
        ids = torch.randint(0, SMOLLM2_135M_SHAPE["vocab_size"], tokens, generator=generator)
        minibatches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    base = snapshot_state(model)
    window = [
        {key: value + 1e-3 * torch.randn(value.shape, generator=generator) for key, value in base.items()}
        for _ in range(8)
    ]
    model.eval()

    def plain() -> None:
        for batch in minibatches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()

    def search() -> None:
        loss_fn = model_loss(model, cycle(minibatches), torch.device("cpu"))  # type: ignore[arg-type]
        select_snapshots(window, loss_fn, config)

    fns: dict[str, Callable[[], object]] = {
        f"{calls} plain forward + backward passes of the LoRA model": plain,
        f"SeWA search (K=8, k={config.k}, I={config.iterations}, M={config.mc_samples}), "
        "SeWACallback's loss (model_loss)": search,
    }
    times = interleaved_seconds(fns, repeats)
    overhead_table(
        f"2. Selection overhead on the SmolLM2-135M-shaped Llama, LoRA r=8 on {sorted(lora_targets(model))} "
        f"({len(base)} adapter tensors, {sum(v.numel() for v in base.values()):,} parameters); minibatches of "
        f"{tokens[0]} x {tokens[1]} tokens; median of {repeats} interleaved rounds",
        times,
        next(iter(fns)),
        1.2,
    )


def lora_targets(model: nn.Module) -> set[str]:
    """The module names LoRA wraps (``q_proj``, ...), read from the adapter parameters' names."""
    targets = set()
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if "lora_A" in parts:
            targets.add(parts[parts.index("lora_A") - 1])
    return targets


def snapshot_memory(full: nn.Module, lora: nn.Module, windows: tuple[int, int]) -> None:
    rows = []
    per_snapshot = {}
    for label, model, window in (
        ("full fine-tuning (every parameter trainable)", full, windows[0]),
        ("LoRA r=8, PEFT's default targets", lora, windows[1]),
    ):
        state = snapshot_state(model)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        per_snapshot[label] = nbytes
        store = SnapshotStore(window)
        gc.collect()
        with MemoryMeter("cpu") as meter:
            for step in range(window):
                store.add(step, state)
        rows.append(
            [
                label,
                f"{sum(t.numel() for t in state.values()):,}",
                format_bytes(nbytes),
                f"{window}",
                format_bytes(meter.growth_bytes) if meter.growth_bytes else "below resolution",
                format_bytes(meter.growth_bytes / window) if meter.growth_bytes else "-",
            ]
        )
        del store
        gc.collect()
    ratio = per_snapshot[rows[1][0]] / per_snapshot[rows[0][0]]
    for row, label in zip(rows, per_snapshot, strict=True):
        row.append(f"{per_snapshot[label] / per_snapshot[rows[0][0]]:.2%}")
    table(
        "3. Snapshot memory on the SmolLM2-135M-shaped Llama (float32)",
        [
            "snapshots of",
            "parameters",
            "bytes per snapshot",
            "window",
            "RSS growth (MemoryMeter)",
            "RSS growth per snapshot",
            "ratio to a full snapshot",
        ],
        rows,
    )
    print(
        f"LoRA snapshot / full snapshot = {ratio:.2%} (target < 1 %): {'met' if ratio < 0.01 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the MLP table")
    parser.add_argument("--llama-repeats", type=int, default=3, help="interleaved rounds of the Llama table")
    parser.add_argument("--llama-iterations", type=int, default=5, help="I of the Llama search (M = 2)")
    parser.add_argument("--llama-tokens", type=int, nargs=2, default=(2, 32), metavar=("BATCH", "LENGTH"))
    parser.add_argument("--skip", nargs="*", default=(), choices=("mlp", "llama", "memory"))
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the start"
    )
    if "mlp" not in args.skip:
        mlp_overhead(args.repeats)
    if "llama" not in args.skip or "memory" not in args.skip:
        full, lora = smollm2_shaped_models()
        if "llama" not in args.skip:
            llama_overhead(lora, args.llama_repeats, args.llama_iterations, tuple(args.llama_tokens))
        if "memory" not in args.skip:
            snapshot_memory(full, lora, (2, 8))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
