"""SeWA's costs, measured side by side in one run (not a test).

1. Selection time against one training epoch of the demo (digits MLP, 1000 examples, batch 32, the demo's
   own training step): the default search (per-sample minibatches), the vmapped one and a short one, each as
   a ratio to the epoch timed in the same run, beside the default search's loss calls timed alone (the floor
   any implementation of the default search has), a single loss call on one training minibatch (the unit
   any search spends; the target's budget is counted in it) and the number of examples each pushes through
   the network, counted in epochs.
2. Snapshot memory on tiny_causal_lm() and a wider one: SeWACallback's trainable-only snapshots of a fully
   fine-tuned model and of a LoRA (r=8) model, against keeping full copies of the model; exact tensor bytes
   plus the resident memory a window of snapshots adds (MemoryMeter).
3. Selection time on tiny_causal_lm(), full model against LoRA adapters, as a ratio to one training step.

Usage (from the workspace root):
    OMP_NUM_THREADS=1 uv run --no-sync python packages/sewa/benchmarks/bench_sewa.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import platform
import statistics
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from paperpack.core.device import MemoryMeter, format_bytes
from paperpack.core.hf import default_corpus, tiny_causal_lm
from paperpack.sewa import SeWAConfig, select_checkpoints
from paperpack.sewa.callback import snapshot_state
from paperpack.sewa.demo import DemoSettings, _loss_fn, sgd_step, train_trajectory
from paperpack.sewa.loss import model_loss
from paperpack.sewa.store import SnapshotStore


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every call of each function over ``repeats`` rounds; each round calls every function once,
    in turn, so that a change in the machine's load reaches all of them alike (the machine is shared)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def digits_selection(repeats: int) -> None:
    settings = DemoSettings()
    run = train_trajectory(0, settings)
    model, train = run.model, run.train
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    generator = torch.Generator().manual_seed(0)
    size, batch_size = len(train.y), settings.batch_size

    def epoch() -> None:
        # The demo's own step (shuffled minibatches, the learning rate set per step) at lr 0, so that the model
        # stays the one the window came from.
        order = torch.randperm(size, generator=generator)
        for start in range(0, size - batch_size + 1, batch_size):
            sgd_step(model, optimizer, train, order[start : start + batch_size], 0.0)

    base = SeWAConfig(k=settings.k, iterations=settings.iterations, mc_samples=settings.mc_samples)
    calls = base.iterations * base.mc_samples
    params = {key: value.clone().requires_grad_(True) for key, value in run.snapshots[-1].items()}

    def loss_calls_alone() -> None:
        # The passes any implementation of the default search must make: I × M calls of the demo's loss on
        # minibatches of 128 with their backward pass, and nothing else.
        loss_fn = _loss_fn(model, train, settings.selection_batch, 0)
        for _ in range(calls):
            torch.autograd.grad(loss_fn(params), list(params.values()))

    variants = {
        f"SeWA default (I={base.iterations}, M={base.mc_samples}, batch 128 per sample)": (
            base,
            settings.selection_batch,
        ),
        f"SeWA vmapped (I={base.iterations}, M={base.mc_samples}, batch 128 per iteration)": (
            dataclasses.replace(base, vmap_loss=True),
            settings.selection_batch,
        ),
        "SeWA short (I=20, M=2, batch 32 per sample)": (
            dataclasses.replace(base, iterations=20, mc_samples=2),
            32,
        ),
    }

    def one_loss_call() -> None:
        # A single loss call on one training minibatch (forward + backward): the least any search can do per
        # Monte Carlo sample, and so the unit the target (selection under 10 % of an epoch) is spent in.
        loss_fn = _loss_fn(model, train, batch_size, 0)
        torch.autograd.grad(loss_fn(params), list(params.values()))

    floor = f"the default search's {calls} loss calls alone (forward + backward, batch 128)"
    single = f"one loss call alone (forward + backward, batch {batch_size})"
    fns: dict[str, Callable[[], object]] = {"epoch": epoch, floor: loss_calls_alone, single: one_loss_call}
    for name, (config, batch) in variants.items():
        fns[name] = lambda c=config, b=batch: select_checkpoints(
            run.snapshots, _loss_fn(model, train, b, 0), c
        )
    times = interleaved_seconds(fns, repeats)
    epoch_seconds = statistics.median(times["epoch"])
    examples = (size // batch_size) * batch_size
    work = {floor: calls * settings.selection_batch, single: batch_size}
    evaluations = {floor: calls, single: 1}
    for name, (config, batch) in variants.items():
        work[name] = config.iterations * config.mc_samples * batch
        evaluations[name] = config.iterations * (1 if config.vmap_loss else config.mc_samples)
    rows = [
        [
            f"one training epoch of the demo ({size // batch_size} steps of {batch_size})",
            f"{epoch_seconds * 1000:.1f} ms",
            "1.00",
            "-",
            "1.00",
        ]
    ]
    for name, examples_seen in work.items():
        seconds = statistics.median(times[name])
        rows.append(
            [
                name,
                f"{seconds * 1000:.3g} ms",
                f"{seconds / epoch_seconds:.2f}",
                str(evaluations[name]),
                f"{examples_seen / examples:.3g}",
            ]
        )
    table(
        f"1. Selection time vs one epoch of the demo (K={settings.window}, k={settings.k}; median of {repeats} "
        f"interleaved rounds; epoch {min(times['epoch']) * 1000:.1f} to {max(times['epoch']) * 1000:.1f} ms "
        f"over the rounds; the demo's own training measured {run.seconds_per_epoch * 1000:.1f} ms per epoch)",
        ["what", "time", "ratio to epoch", "loss calls", "examples through the network, in epochs"],
        rows,
    )
    budget = 0.1 * epoch_seconds / statistics.median(times[single])
    print(
        f"The target, selection under 10 % of an epoch, leaves time for {budget:.1f} loss calls on training "
        f"minibatches of {batch_size}, before any other work; the default search makes {calls}."
    )


def lm_models(**shape: int) -> tuple[nn.Module, nn.Module, object]:
    model, tokenizer = tiny_causal_lm(**shape)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16))
    return model, lora, tokenizer


def snapshot_memory(window: int) -> None:
    rows = []
    # The issue's model, then a wider one: the adapters' share of the model is set by its shape.
    for label, shape in (("tiny_causal_lm()", {}), ("tiny_causal_lm(hidden_size=256)", {"hidden_size": 256})):
        full_model, lora_model, _ = lm_models(**shape)
        full_bytes = sum(t.numel() * t.element_size() for t in full_model.state_dict().values())
        for name, model in (
            ("full fine-tuning", full_model),
            ("LoRA r=8 (PEFT default targets q_proj, v_proj)", lora_model),
        ):
            state = snapshot_state(model)
            per = sum(t.numel() * t.element_size() for t in state.values())
            store = SnapshotStore(window)
            gc.collect()
            with MemoryMeter("cpu") as meter:
                for step in range(window):
                    store.add(step, state)
            rows.append(
                [
                    label,
                    name,
                    f"{sum(t.numel() for t in state.values()):,}",
                    format_bytes(per),
                    format_bytes(per * window),
                    format_bytes(meter.growth_bytes),
                    f"{per / full_bytes:.2%}",
                ]
            )
            del store
        rows.append(
            [
                label,
                "full copies of the model (state_dict)",
                f"{sum(t.numel() for t in full_model.state_dict().values()):,}",
                format_bytes(full_bytes),
                format_bytes(full_bytes * window),
                "-",
                "100.00%",
            ]
        )
    table(
        f"2. Snapshot memory, window of {window} snapshots",
        [
            "model",
            "snapshots of",
            "params",
            "bytes / snapshot",
            f"bytes / {window} snapshots",
            "RSS growth (MemoryMeter)",
            "ratio to a full copy",
        ],
        rows,
    )


def lm_selection(repeats: int) -> None:
    full_model, lora_model, tokenizer = lm_models()
    encoded = tokenizer(
        default_corpus(8, seed=0), padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    batch = {**encoded, "labels": encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)}
    config = SeWAConfig(k=3, iterations=10, mc_samples=2)
    rows = []
    for name, model in (("full fine-tuning", full_model), ("LoRA r=8", lora_model)):
        generator = torch.Generator().manual_seed(0)
        base = snapshot_state(model)
        window = [
            {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
            for _ in range(8)
        ]
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)

        def step(m: nn.Module = model, o: torch.optim.Optimizer = optimizer) -> None:
            loss = m(**batch).loss
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        def batches() -> object:
            while True:
                yield batch

        def select(m: nn.Module = model, w: list[dict[str, torch.Tensor]] = window) -> None:
            m.eval()
            try:
                select_checkpoints(w, model_loss(m, batches(), torch.device("cpu")), config)  # type: ignore[arg-type]
            finally:
                m.train()

        times = interleaved_seconds({"step": step, "select": select}, repeats)
        step_seconds, seconds = statistics.median(times["step"]), statistics.median(times["select"])
        rows.append(
            [
                name,
                f"{step_seconds * 1000:.1f} ms",
                f"{seconds * 1000:.0f} ms",
                f"{seconds / step_seconds:.1f}",
                str(config.iterations * config.mc_samples),
            ]
        )
    table(
        f"3. Selection on tiny_causal_lm() (K=8, k=3, I={config.iterations}, M={config.mc_samples}, "
        f"batch 8x32 tokens; median of {repeats})",
        ["model", "one training step", "selection", "ratio to a step", "loss calls"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )
    torch.manual_seed(0)
    digits_selection(args.repeats)
    snapshot_memory(args.window)
    lm_selection(args.repeats)


if __name__ == "__main__":
    main()
