"""The collators' own time against one training step of tiny_causal_lm() at sequence length 1024.

Target (issue): the MEAP collator's time under 1% of a training step. Prints the collator times (TRL's
padding collator as the baseline, MEAPCollator, MEAPSFTCollator in both layouts), the training step, and
the ratios, all measured in one run.

    uv run --no-sync python packages/meap/benchmarks/bench_collator.py [--seq-len 1024] [--batch 8]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from paperpack.core.hf import tiny_causal_lm
from paperpack.meap import MEAPCollator, MEAPConfig, MEAPSFTCollator, add_mask_token


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = tiny_causal_lm()
    add_mask_token(tokenizer, model)
    generator = torch.Generator().manual_seed(0)
    ids = [
        torch.randint(8, len(tokenizer) - 1, (args.seq_len,), generator=generator).tolist()
        for _ in range(args.batch)
    ]
    pretrain = [{"input_ids": row} for row in ids]
    prompt = args.seq_len // 4
    sft = [{"input_ids": row, "labels": [-100] * prompt + row[prompt:]} for row in ids]

    collators: dict[str, tuple[Callable[[list[dict[str, Any]]], Any], list[dict[str, Any]]]] = {
        "TRL DataCollatorForLanguageModeling": (
            DataCollatorForLanguageModeling(tokenizer.pad_token_id),
            pretrain,
        ),
        "MEAPCollator (P=0.15)": (MEAPCollator(tokenizer, MEAPConfig()), pretrain),
        "MEAPSFTCollator separate": (MEAPSFTCollator(tokenizer, MEAPConfig()), sft),
        "MEAPSFTCollator concat": (MEAPSFTCollator(tokenizer, MEAPConfig(sft_layout="concat")), sft),
    }
    seconds = {
        name: median_seconds(lambda c=collator, e=examples: c(e), args.repeats)
        for name, (collator, examples) in collators.items()
    }
    batch = MEAPCollator(tokenizer, MEAPConfig())(pretrain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = median_seconds(train_step, args.step_repeats)
    baseline = seconds["TRL DataCollatorForLanguageModeling"]
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"batch {args.batch} x {args.seq_len} tokens; training step (forward + backward + AdamW) of "
        f"tiny_causal_lm(): {step * 1e3:.1f} ms (median of {args.step_repeats})\n"
    )
    print(f"{'collator':<38}{'ms':>8}{'% of step':>11}{'vs TRL':>8}")
    for name, value in seconds.items():
        print(f"{name:<38}{value * 1e3:>8.2f}{100 * value / step:>11.2f}{value / baseline:>8.2f}")


if __name__ == "__main__":
    main()
