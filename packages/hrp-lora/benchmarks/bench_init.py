"""The whole HRP init against ordinary rank-r LoRA training, on a Llama of SmolLM2-135M's shape.

The model is built from a config of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key-value heads,
intermediate 1536, vocabulary 49152, tied embeddings; random weights, nothing downloaded), in float32. LoRA
targets every linear layer of the decoder ("all-linear": 210 layers), r = 8; HRP preheats at R = 64 (8·r).

Arms, each in a subprocess of its own (interleaved over ``--rounds`` rounds; medians reported):

- ``lora``: ``get_peft_model`` with r = 8, then ``--steps`` AdamW steps (the baseline).
- ``hrp``: ``hrp_initialize`` with ``preheat_steps = --steps``: the rank-64 preheat (AdamW), the extraction
  ("exact"), the rank-8 init and the clean-up. Its extraction time is reported on its own.
- ``hrp_sgd``: the same with ``preheat_optimizer="sgd"`` (no optimizer moments during the preheat).
- ``lora_R``: ``--steps`` AdamW steps of a plain rank-64 LoRA: what the preheat is, without the extraction.

Time (wall clock, and the process's CPU time, which a loaded machine disturbs less) covers creating the
adapter(s) and every step. Memory: the core's ``MemoryMeter`` (peak resident set
size on the CPU) over the same span, after the model is built and a no-grad warm-up forward pass ran; the
subprocess sets glibc's ``MALLOC_MMAP_THRESHOLD_`` to 64 KiB so that the resident set follows the live tensors.
``peak`` is the process's peak (model, libraries and all); ``growth`` is the peak above the memory in use when
the span began (the model and libraries), i.e. what training added.

Usage:
    python packages/hrp-lora/benchmarks/bench_init.py [--steps 5] [--batch 2] [--seq 128] [--rounds 3]
        [--threads 2] [--arms lora hrp hrp_sgd lora_R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RANK, PREHEAT_RANK = 8, 64
ARMS = ("lora", "hrp", "hrp_sgd", "lora_R")


def child(arm: str, steps: int, batch: int, seq: int, threads: int) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import paperpack.hrp_lora.preheat as preheat_module
    from paperpack.core.device import MemoryMeter
    from paperpack.hrp_lora import HRPConfig, hrp_initialize

    torch.set_num_threads(threads)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.train()
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
        batches.append({"input_ids": ids, "labels": ids})
    with torch.no_grad():
        model(**batches[0])
    lr = 1e-4
    extraction: list[float] = []
    real = preheat_module.initialize_from_adapter

    def timed(*args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        real(*args, **kwargs)  # type: ignore[arg-type]
        extraction.append(time.perf_counter() - started)

    preheat_module.initialize_from_adapter = timed  # type: ignore[assignment]
    with MemoryMeter("cpu") as meter:
        started, cpu_started = time.perf_counter(), time.process_time()
        if arm in ("lora", "lora_R"):
            rank = RANK if arm == "lora" else PREHEAT_RANK
            peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules="all-linear"))
            optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
            for inputs in batches:
                peft_model(**inputs).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            optimizer_name = "sgd" if arm == "hrp_sgd" else "adamw"
            hrp = HRPConfig(
                preheat_rank=PREHEAT_RANK,
                preheat_steps=steps,
                preheat_lr=lr,
                preheat_optimizer=optimizer_name,
            )
            hrp_initialize(model, LoraConfig(r=RANK, target_modules="all-linear"), batches, hrp)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "seconds": seconds,
        "cpu": cpu,
        "extraction": sum(extraction),
        "peak": meter.peak_bytes / 2**20,
        "growth": meter.growth_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.seq, args.threads)))
        return
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    common = [
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--threads",
        str(args.threads),
    ]
    print(
        f"SmolLM2-135M shape, float32, r={RANK}, R={PREHEAT_RANK}, all-linear, {args.steps} steps of "
        f"{args.batch}x{args.seq} tokens, {args.threads} threads; load average before {os.getloadavg()}"
    )
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    for round_index in range(args.rounds):
        for arm in args.arms:
            output = subprocess.run(
                [sys.executable, __file__, "--child", arm, *common],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            results[arm].append(json.loads(output.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {arm}: {results[arm][-1]}", flush=True)
    median = {
        arm: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for arm, runs in results.items()
    }
    base = median.get("lora")
    print(
        f"\n{'arm':8} {'time s':>8} {'cpu s':>8} {'extract s':>10} {'peak MiB':>9} {'growth MiB':>11} {'time/lora':>10} {'cpu/lora':>9} {'peak/lora':>10} {'growth/lora':>12}"
    )
    for arm, values in median.items():
        ratios = (
            f"{values['seconds'] / base['seconds']:10.2f} {values['cpu'] / base['cpu']:9.2f} {values['peak'] / base['peak']:10.3f} {values['growth'] / base['growth']:12.2f}"
            if base
            else ""
        )
        print(
            f"{arm:8} {values['seconds']:8.1f} {values['cpu']:8.1f} {values['extraction']:10.3f} {values['peak']:9.0f} {values['growth']:11.0f} {ratios}"
        )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
