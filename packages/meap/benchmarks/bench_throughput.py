"""Training throughput with MEAP against plain next-token prediction, measured side by side.

The paper claims MEAP costs nothing extra: same model, same batch, same forward pass; only the collator
differs. This times full training steps (collate + forward + backward + AdamW step) for the two arms,
alternating them so that both see the same machine load, and prints tokens/s and the ratio.

    uv run --no-sync python packages/meap/benchmarks/bench_throughput.py [--seq-len 1024] [--batch 4] [--device auto]

On a GPU the batch is moved to the device inside the timed step, as the Trainer does, and the device is
synchronised before the clock stops, so the collator's CPU time counts in full.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from paperpack.core.device import resolve_device
from paperpack.core.hf import tiny_causal_lm
from paperpack.meap import MEAPCollator, MEAPConfig, add_mask_token


def make_examples(vocab: int, batch: int, seq_len: int, seed: int) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(8, vocab, (seq_len,), generator=generator).tolist()} for _ in range(batch)
    ]


def step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    collator: Any,
    examples: list[dict[str, Any]],
    device: torch.device,
) -> float:
    _synchronize(device)
    started = time.perf_counter()
    batch = {key: value.to(device, non_blocking=True) for key, value in collator(examples).items()}
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _synchronize(device)
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (the core's resolve_device)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    model, tokenizer = tiny_causal_lm()
    add_mask_token(tokenizer, model)
    model.to(device)
    arms = {
        "NTP (TRL collator)": DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
        "MEAP (P=0.15)": MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.15)),
    }
    models = {name: copy.deepcopy(model) for name in arms}
    optimizers = {name: torch.optim.AdamW(models[name].parameters(), lr=1e-4) for name in arms}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(args.warmup + args.rounds):
        examples = make_examples(len(tokenizer) - 1, args.batch, args.seq_len, seed=round_index)
        order = list(arms) if round_index % 2 == 0 else list(reversed(arms))
        for name in order:
            elapsed = step(models[name], optimizers[name], arms[name], examples, device)
            if round_index >= args.warmup:
                times[name].append(elapsed)

    tokens = args.batch * args.seq_len
    baseline = statistics.median(times["NTP (TRL collator)"])
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"device {_device_name(device)}"
    )
    print(
        f"model: tiny_causal_lm() (hidden 64, 2 layers, vocab {len(tokenizer)}), batch {args.batch} x "
        f"{args.seq_len} tokens, median of {args.rounds} alternating steps\n"
    )
    print(f"{'arm':<22}{'step ms':>10}{'tokens/s':>12}{'vs NTP':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22}{median * 1e3:>10.1f}{tokens / median:>12.0f}{baseline / median:>9.3f}")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
