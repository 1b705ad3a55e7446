"""O1-Pruner benchmarks, each arm beside its baseline in one run, rounds interleaved, medians reported.

1. Pre-sampling throughput on tiny_causal_lm(): presample's batched generation (B problems x K samples per
   generate call) against one sample per generate call. Target: >= 4x.
2. Trainer step time on a Llama of >= 50M parameters built from a config, on the same batches: O1-Pruner with
   the reference as a second model, as the PEFT base (LoRA, adapter disabled), and with the reference's
   log-probabilities stored at pre-sampling (``store_ref_logps``: no reference pass), against plain SFT and LoRA
   SFT. Target: <= 1.6x SFT's step time.
3. Peak memory (paperpack.core.device.MemoryMeter, one fresh process per arm): LoRA O1-Pruner with the
   adapter-disabled reference and with stored log-probabilities, against LoRA SFT. Target: <= 1.1x.

Run: OMP_NUM_THREADS=2 uv run python packages/o1-pruner/benchmarks/bench_o1_pruner.py [--rounds 3] [--quick]
     [--sections presample steps memory]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from paperpack.core.device import MemoryMeter
from paperpack.core.hf import benchmark_llama, sample_completions, tiny_causal_lm, training_args

ARMS = ("sft", "o1_second_model", "o1_stored", "lora_sft", "o1_lora_base", "o1_lora_stored")


def presample_throughput(rounds: int, problems: int, k: int, new_tokens: int) -> dict[str, float]:
    model, tokenizer = tiny_causal_lm()
    model.eval()
    model.generation_config.min_new_tokens = new_tokens  # same length in both arms (no early EOS)
    prompts = [f"Q: what is {i} + {i + 3}? A:" for i in range(problems)]
    timings: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(rounds):
        start = time.perf_counter()
        sample_completions(
            model, tokenizer, prompts, num_samples=k, max_new_tokens=new_tokens, batch_size=problems
        )
        timings["batched"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for prompt in prompts:
            for j in range(k):
                sample_completions(
                    model, tokenizer, [prompt], num_samples=1, max_new_tokens=new_tokens, seed=j
                )
        timings["one_at_a_time"].append(time.perf_counter() - start)
    samples = problems * k
    return {name: samples / statistics.median(values) for name, values in timings.items()}


def llama_50m() -> Any:
    """The core's benchmark Llama with this benchmark's MLP width and context (58.5M parameters, as measured)."""
    return benchmark_llama(intermediate_size=1408, max_position_embeddings=1024)


def with_ref_logps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the initial model's log-probabilities (what presample stores), taken once."""
    from paperpack.o1_pruner.presampling import reference_log_probs

    logps = reference_log_probs(
        llama_50m(),
        [r["prompt_ids"] for r in records],
        [r["completion_ids"] for r in records],
        batch_size=4,
    )
    return [{**record, "ref_logps": values} for record, values in zip(records, logps, strict=True)]


def batches(count: int, batch: int, prompt: int, completion: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    records = []
    for _ in range(count * batch):
        records.append(
            {
                "prompt_ids": torch.randint(3, 32000, (prompt,), generator=g).tolist(),
                "completion_ids": torch.randint(3, 32000, (completion,), generator=g).tolist(),
                "weight": float(torch.randn((), generator=g)),
            }
        )
    return records


class _SFTCollator:
    def __init__(self) -> None:
        from paperpack.o1_pruner.collator import O1PrunerCollator

        self.inner = O1PrunerCollator(0)

    def __call__(self, records: Any) -> dict[str, torch.Tensor]:
        batch = self.inner(records)
        del batch["weight"]
        return batch


def make_trainer(arm: str, records: list[dict[str, Any]], batch: int, steps: int, folder: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    from paperpack.o1_pruner import O1PrunerConfig, O1PrunerTrainer

    model = llama_50m()
    ref = copy.deepcopy(model) if arm == "o1_second_model" else None
    if arm.startswith("lora") or arm.startswith("o1_lora"):
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        )
    settings = {
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "learning_rate": 1e-5,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "train_sampling_strategy": "sequential",
        "report_to": "none",
    }
    if arm.startswith("o1"):
        args = training_args(folder, cls=O1PrunerConfig, **settings)
        return O1PrunerTrainer(model=model, args=args, ref_model=ref, train_dataset=records)
    return Trainer(
        model=model,
        args=training_args(folder, **settings),
        train_dataset=records,
        data_collator=_SFTCollator(),
    )


def step_times(
    arm: str, records: list[dict[str, Any]], batch: int, steps: int, warmup: int
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each training step after ``warmup`` steps (CPU: this process, all threads)."""
    from transformers import TrainerCallback

    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(arm, records, batch, steps, folder)
        trainer.add_callback(Clock())
        trainer.train()
    return times[warmup:]


def memory_of(arm: str, records_file: str, batch: int, steps: int) -> dict[str, Any]:
    """Peak memory of training ``arm`` (the model built before the meter starts), in this process.

    The records (with the stored reference log-probabilities) come from ``records_file``, computed by the
    parent process, so that no second model runs in this one before the meter starts.
    """
    from transformers import TrainerCallback

    with open(records_file, encoding="utf-8") as handle:
        records = json.load(handle)
    if not arm.endswith("_stored"):
        records = [{k: v for k, v in r.items() if k != "ref_logps"} for r in records]
    after_step: list[float] = []

    class Resident(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            after_step.append(meter._rss() / 2**20)

    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(arm, records, batch, steps, folder)
        trainer.add_callback(Resident())
        with MemoryMeter() as meter:
            trainer.train()
    return {
        "peak_mib": meter.peak_mib,
        "growth_mib": meter.growth_mib,
        "start_mib": meter.start_bytes / 2**20,
        "after_step_mib": after_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer steps and problems")
    parser.add_argument("--memory-arm", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--records", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sections", nargs="+", default=["presample", "steps", "memory"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="step-time arms")
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm (default 6, quick 3)")
    args = parser.parse_args()
    batch, prompt, completion = 4, 64, 128
    steps, warmup = (3, 1) if args.quick else (6, 2)
    if args.steps is not None:
        steps, warmup = args.steps, 1
    if args.memory_arm:
        print(json.dumps(memory_of(args.memory_arm, args.records, batch, steps)))
        return
    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()}")

    if "presample" in args.sections:
        presample_section(args.rounds, *((8, 4) if args.quick else (16, 8)))
    if "steps" in args.sections:
        steps_section(args.rounds, batch, prompt, completion, steps=steps, warmup=warmup, arms=args.arms)
    if "memory" in args.sections:
        memory_section(
            args.rounds, args.quick, batch=batch, prompt=prompt, completion=completion, steps=steps
        )
    print(f"\nload average at end: {os.getloadavg()}")


def presample_section(rounds: int, problems: int, k: int) -> None:
    """Batched pre-sampling against one sample per generate call."""
    throughput = presample_throughput(rounds, problems, k, new_tokens=32)
    ratio = throughput["batched"] / throughput["one_at_a_time"]
    print(
        f"\n1. presampling, tiny_causal_lm, {problems} problems x K={k}, 32 new tokens each, median of "
        f"{rounds} rounds"
    )
    print(
        f"   batched: {throughput['batched']:.1f} samples/s; one at a time: {throughput['one_at_a_time']:.1f} "
        f"samples/s; ratio {ratio:.2f}x (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})"
    )


def steps_section(
    rounds: int, batch: int, prompt: int, completion: int, *, steps: int, warmup: int, arms: list[str]
) -> None:
    """Step time of every arm on the same batches, rounds interleaved (the arm order reversed every round)."""
    params = sum(p.numel() for p in llama_50m().parameters())
    records = batches(steps, batch, prompt, completion)
    stored = with_ref_logps(records)
    timings: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    loads = [os.getloadavg()[0]]
    for number in range(rounds):
        for arm in arms if number % 2 == 0 else arms[::-1]:
            data = stored if arm.endswith("_stored") else records
            timings[arm] += step_times(arm, data, batch, steps, warmup)
        loads.append(os.getloadavg()[0])
    wall = {arm: statistics.median(t[0] for t in values) for arm, values in timings.items()}
    cpu = {arm: statistics.median(t[1] for t in values) for arm, values in timings.items()}
    counts = {len(values) for values in timings.values()}
    print(
        f"\n2. step time, Llama {params / 1e6:.1f}M parameters from a config, batch {batch} x ({prompt} prompt + "
        f"{completion} completion) tokens, median of {min(counts)} steps per arm ({rounds} rounds, order "
        f"reversed every round, {warmup} warm-up step(s) per trainer); 1-minute load average at the start and "
        f"after each round: {', '.join(f'{x:.1f}' for x in loads)}"
    )
    for arm in arms:
        print(f"   {arm}: wall {wall[arm]:.3f} s, CPU {cpu[arm]:.3f} s (all steps: {timings[arm]})")
    for arm, base in (
        ("o1_second_model", "sft"),
        ("o1_stored", "sft"),
        ("o1_lora_base", "lora_sft"),
        ("o1_lora_stored", "lora_sft"),
    ):
        if arm not in wall or base not in wall:
            continue
        r, c = wall[arm] / wall[base], cpu[arm] / cpu[base]
        print(
            f"   {arm} / {base}: wall {r:.2f}x, CPU {c:.2f}x "
            f"(target <= 1.6x: {'met' if max(r, c) <= 1.6 else 'NOT met'})"
        )


def memory_section(rounds: int, quick: bool, *, batch: int, prompt: int, completion: int, steps: int) -> None:
    """Peak memory of LoRA SFT and the LoRA O1-Pruner arms, one fresh process each, rounds interleaved."""
    print(
        "\n3. peak memory (MemoryMeter, resident set on the CPU; a fresh process per arm, rounds interleaved; "
        "the stored log-probabilities computed once in this process and read from a file)"
    )
    memory: dict[str, list[dict[str, Any]]] = {"lora_sft": [], "o1_lora_base": [], "o1_lora_stored": []}
    with tempfile.TemporaryDirectory() as folder:
        records_file = os.path.join(folder, "records.json")
        with open(records_file, "w", encoding="utf-8") as handle:
            json.dump(with_ref_logps(batches(steps, batch, prompt, completion)), handle)
        for _ in range(rounds):
            for arm, runs in memory.items():
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--memory-arm",
                        arm,
                        "--records",
                        records_file,
                        *(["--quick"] if quick else []),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for arm, runs in memory.items():
        for run in runs:
            after = ", ".join(f"{x:.0f}" for x in run["after_step_mib"])
            print(
                f"   {arm}: start {run['start_mib']:.0f} MiB, peak {run['peak_mib']:.0f} MiB, growth "
                f"{run['growth_mib']:.0f} MiB, resident after each step {after} MiB"
            )
    for key in ("peak_mib", "growth_mib"):
        values = {arm: statistics.median([m[key] for m in runs]) for arm, runs in memory.items()}
        for arm in ("o1_lora_base", "o1_lora_stored"):
            r = values[arm] / values["lora_sft"]
            print(
                f"   {key}: {arm} {values[arm]:.0f} MiB vs lora_sft {values['lora_sft']:.0f} MiB: "
                f"{r:.2f}x (target <= 1.1x: {'met' if r <= 1.1 else 'NOT met'})"
            )


if __name__ == "__main__":
    main()
