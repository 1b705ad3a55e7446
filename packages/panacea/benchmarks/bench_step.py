"""Step time and peak memory of PanaceaTrainer against plain Trainer SFT on the same batches, side by side.

The model is the core's ``benchmark_llama()``: a Llama of about 58M parameters built from a config (random
weights, nothing downloaded).
Both arms train it with HF's ``Trainer`` machinery (AdamW, the default ``optim``, no gradient clipping) on the
same random token batches; Panacea also draws harmful batches of the same shape. Each measurement runs in a
subprocess of its own, and the arms alternate round by round, so machine load hits both alike.

- step: the median wall time of a training step (``on_step_begin`` to ``on_step_end``: forward-backward passes,
  Panacea's bookkeeping and the optimizer step), after ``--warmup`` steps that are not timed; on the CPU also
  the process's CPU time per step, which other processes on a shared machine disturb far less than wall time
  (run with ``--threads 1`` so that it counts one core's work).
- peak: :class:`paperpack.core.device.MemoryMeter` around building the model and the trainer and training
  (peak CUDA memory allocated on a GPU; peak resident set size on the CPU, measured with glibc's
  ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB so freed blocks go back to the system), minus what torch and
  transformers hold after import.

``--lora`` trains LoRA adapters (r=32 on q, k, v, as the paper's scripts) instead of every weight.
``--pieces`` sets Panacea's ``perturbed_pass_pieces`` (default: the trainer's choice, 2 for full fine-tuning and
1 for LoRA); ``--also-pieces N`` adds a second Panacea arm with ``perturbed_pass_pieces=N`` to the rounds. The random weights give a harmful loss of about ln 32000 ≈ 10.4, above the default clamp C = 5,
which would spare pass 2 its backward on every step; the Panacea arm therefore runs with
``--harmful-loss-clamp 100`` (on, never reached), so that every step does all of its work, the no-grad forward
that decides the clamp included.

Where the memory goes (full fine-tuning with AdamW, W = the trainable weights' bytes, A = the activation peak
of one forward-backward): SFT peaks at about weights + Adam (3W) + A, its gradients being allocated while the
activations are freed. Panacea keeps h0 (W) from pass 1 to pass 2: the task pass runs beside it (4W + A), and
pass 2, at w + ε after the task pass, beside h0 and the task gradient g (5W + A in one piece, 5W + A/2 in
halves). The ratio falls as A grows (larger batches, longer sequences), and is near 1 with LoRA, whose W is
small.

Usage:
    python packages/panacea/benchmarks/bench_step.py [--device auto] [--rounds 3] [--steps 4] [--batch 8]
        [--seq 128] [--threads 1] [--lora] [--pieces N] [--also-pieces N] [--harmful-loss-clamp 100]
        [--phases]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def build_model(device: str, lora: bool) -> Any:
    from paperpack.core.hf import benchmark_llama

    model = benchmark_llama(seed=0)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=32, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0.0),
        )
    return model.to(device)


def worker(args: argparse.Namespace) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before the meter)
    from transformers import Trainer, TrainerCallback

    from paperpack.core.device import MemoryMeter, resolve_device
    from paperpack.core.hf import training_args
    from paperpack.panacea import PanaceaConfig, PanaceaTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(1)
    steps = args.warmup + args.steps
    rows = steps * args.batch

    def dataset() -> list[dict[str, torch.Tensor]]:
        ids = torch.randint(0, 32000, (rows, args.seq), generator=generator)
        return [{"input_ids": row, "labels": row} for row in ids]

    task, harmful = dataset(), dataset()
    times: list[float] = []
    cpu_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)

    settings = {
        "max_steps": steps,
        "per_device_train_batch_size": args.batch,
        "max_grad_norm": 0.0,
        "save_strategy": "no",
        "logging_steps": 10_000,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "use_cpu": device.type == "cpu",
        "bf16": False,
    }
    phases: dict[str, list[float]] = {}
    if args.phases:
        from paperpack.panacea import PanaceaTrainerMixin

        def timed(owner: Any, name: str, label: str) -> None:
            method = getattr(owner, name)

            def run(*a: Any, **k: Any) -> Any:
                start = time.process_time()
                result = method(*a, **k)
                phases.setdefault(label, []).append(time.process_time() - start)
                return result

            setattr(owner, name, run)

        # In this worker process only: CPU time of each pass (the task pass is the parent's training_step).
        timed(Trainer, "training_step", "task pass")
        timed(PanaceaTrainerMixin, "_harmful_pass", "pass 1")
        timed(PanaceaTrainerMixin, "_perturbed_pass", "pass 2")
    pieces = None
    with MemoryMeter(device) as meter:
        model = build_model(str(device), args.lora)
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if args.worker == "panacea":
            config = training_args(
                args.output,
                cls=PanaceaConfig,
                final_perturbation="none",
                harmful_loss_clamp=args.harmful_loss_clamp,
                perturbed_pass_pieces=args.pieces,
                **settings,
            )
            panacea = PanaceaTrainer(
                model=model, args=config, train_dataset=task, harmful_dataset=harmful, callbacks=[Clock()]
            )
            pieces = panacea.perturbed_pass_pieces
            trainer: Trainer = panacea
        else:
            config = training_args(args.output, **settings)
            trainer = Trainer(model=model, args=config, train_dataset=task, callbacks=[Clock()])
        trainer.train()
    print(
        json.dumps(
            {
                "params": params,
                "trainable": trainable,
                "peak": meter.growth_bytes,
                "pieces": pieces,
                **(
                    {
                        "phases_cpu_s": {
                            k: round(statistics.median(v[args.warmup :]), 3) for k, v in phases.items()
                        }
                    }
                    if phases
                    else {}
                ),
                "device": str(device),
                "step_s": statistics.median(times[args.warmup :]),
                "cpu_s": statistics.median(cpu_times[args.warmup :]),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both arms")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (r=32 on q, k, v)")
    parser.add_argument("--pieces", type=int, default=None, help="Panacea's perturbed_pass_pieces")
    parser.add_argument(
        "--also-pieces", type=int, default=None, help="a second Panacea arm with this perturbed_pass_pieces"
    )
    parser.add_argument(
        "--harmful-loss-clamp", type=float, default=100.0, help="Panacea's C (default: on, never reached)"
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time each pass (median CPU s per step, in each round's line)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import tempfile

    # arm name -> (worker, perturbed_pass_pieces)
    arms: dict[str, tuple[str, int | None]] = {"sft": ("sft", None), "panacea": ("panacea", args.pieces)}
    if args.also_pieces is not None:
        arms[f"panacea, pieces {args.also_pieces}"] = ("panacea", args.also_pieces)
    names = list(arms)
    results: dict[str, dict[str, list[Any]]] = {
        arm: {"step_s": [], "cpu_s": [], "peak": [], "info": []} for arm in names
    }
    for number in range(args.rounds):
        for arm in names if number % 2 == 0 else names[::-1]:
            kind, pieces = arms[arm]
            command = [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--output",
                "{output}",
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--threads",
                str(args.threads),
                *(["--lora"] if args.lora else []),
                *(["--phases"] if args.phases else []),
                *(["--pieces", str(pieces)] if pieces is not None else []),
                "--harmful-loss-clamp",
                str(args.harmful_loss_clamp),
            ]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
            with tempfile.TemporaryDirectory(prefix="panacea-bench-") as folder:  # the Trainer's output_dir
                command[command.index("{output}")] = folder
                output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            measured = json.loads(output.strip().splitlines()[-1])
            results[arm]["step_s"].append(measured["step_s"])
            results[arm]["cpu_s"].append(measured["cpu_s"])
            results[arm]["peak"].append(measured["peak"])
            results[arm]["info"].append(measured)
            load = " ".join(f"{value:.2f}" for value in os.getloadavg())
            print(
                f"  round {number + 1} {arm} (load {load}): {json.dumps(measured)}",
                file=sys.stderr,
                flush=True,
            )
    info = results["sft"]["info"][0]
    load = os.getloadavg()
    print(
        f"\n{info['params'] / 1e6:.1f}M-parameter Llama ({info['trainable'] / 1e6:.2f}M trainable"
        f"{', LoRA r=32 on q/k/v' if args.lora else ''}), batch {args.batch} x {args.seq} tokens, device "
        f"{info['device']}, {args.rounds} rounds x {args.steps} timed steps; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print(
        "| arm | step s (wall) | vs SFT | step CPU s | vs SFT | peak MiB | vs SFT | CPU s per round "
        "| peak MiB per round |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = {key: statistics.median(results["sft"][key]) for key in ("step_s", "cpu_s", "peak")}
    for arm in names:
        value = {key: statistics.median(results[arm][key]) for key in ("step_s", "cpu_s", "peak")}
        rounds = ", ".join(f"{t:.2f}" for t in results[arm]["cpu_s"])
        peaks = ", ".join(f"{p / 2**20:.0f}" for p in results[arm]["peak"])
        print(
            f"| {arm} | {value['step_s']:.3f} | {value['step_s'] / base['step_s']:.2f} | {value['cpu_s']:.3f} "
            f"| {value['cpu_s'] / base['cpu_s']:.2f} | {value['peak'] / 2**20:.0f} | {value['peak'] / base['peak']:.3f} "
            f"| {rounds} | {peaks} |"
        )


if __name__ == "__main__":
    main()
