"""Mediator against four full models, plain averaging and an r-tsvm TIES merge, on a Llama of ~57M parameters.

Side by side in one run (arms interleaved in repeated rounds, medians reported):

- storage: the compiled Mediator folder against four full models and one (plain averaging), bytes on disk;
- compile: wall time and peak resident memory of ``compile_mediator`` against ``merge_checkpoints`` with
  TIES on the same base and experts, each arm in a fresh process (the kernel's per-process peak);
- generate: tokens per second of ``MediatorModel.generate`` with one routing choice for the batch against
  the dense model's own ``generate``.

The experts are the base plus seeded perturbations (storage, time and memory do not depend on training).
Weights are stored in bfloat16, as the storage formula in the docs assumes.

    uv run python packages/merge-router/benchmarks/bench_mediator.py [--rounds 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("first", "last", "count", "successor")
SIZES = {"hidden_size": 768, "num_layers": 8, "num_heads": 12, "intermediate_size": 2048}


def build(work: Path) -> None:
    import torch

    from paperpack.core.hf import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(
        hidden_size=SIZES["hidden_size"],
        num_layers=SIZES["num_layers"],
        num_heads=SIZES["num_heads"],
        intermediate_size=SIZES["intermediate_size"],
    )
    model = model.to(torch.bfloat16)
    print(f"model: Llama, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, bfloat16")
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    for index, task in enumerate(TASKS):
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator).to(param.dtype)
                param.copy_(base[name] + 0.01 * noise)
        model.save_pretrained(work / task)


def arm(name: str, work: Path, output: Path, threshold: float, *, warm: bool) -> dict[str, float]:
    """One arm in this (fresh) process: wall time and peak memory growth.

    Both arms import the same modules (torch, transformers' auto classes, r-tsvm, merge-router) before the
    meter starts, so that the peak compares the work, not the imports. With ``warm`` they also import the
    architecture's modeling code (``modeling_llama``, which pulls in sympy, scipy, torch._dynamo, ...: about
    200 MB of resident memory whatever the model's size), which the compile needs for the model class (its
    vocabulary tensors) and the TIES merge does not; the arm ``import`` measures that import alone.
    """
    import transformers.models.auto.modeling_auto as auto

    from paperpack.core.device import MemoryMeter
    from paperpack.merge_router import MediatorConfig, compile_mediator
    from paperpack.r_tsvm import MergeConfig, ModelSpec, merge_checkpoints

    def import_model_class() -> None:
        from transformers import AutoConfig

        auto.MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(work / "base"))]

    if warm and name != "import":
        import_model_class()
    with MemoryMeter("cpu") as meter:
        start = time.perf_counter()
        if name == "import":
            import_model_class()
        elif name == "mediator":
            prompts = {task: [f"{task} prompt {i}" for i in range(16)] for task in TASKS}
            config = MediatorConfig(threshold_mode="topk", threshold=threshold, router_steps=100)
            compile_mediator(work / "base", {t: work / t for t in TASKS}, prompts, config, output)
        else:
            recipe = MergeConfig(
                merge_method="ties",
                base_model=str(work / "base"),
                models=[ModelSpec(model=str(work / t)) for t in TASKS],
            )
            merge_checkpoints(recipe, output, progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": meter.growth_bytes}


def folder_bytes(folder: Path, pattern: str = "**/*") -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern) if path.is_file())


def throughput(work: Path, rounds: int) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from paperpack.merge_router import MediatorModel

    torch.set_num_threads(1)
    mediator = MediatorModel.from_pretrained(work / "mediator-0-0", device="cpu")
    dense = AutoModelForCausalLM.from_pretrained(work / "mediator-0-0").eval()
    tokenizer = mediator.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer([f"first prompt {i}" for i in range(4)], return_tensors="pt", padding=True)
    new = 16
    rates: dict[str, list[float]] = {"mediator": [], "dense": []}
    with torch.no_grad():  # one untimed call each: first-call costs (allocations, kernels) are not throughput
        mediator.generate(**batch, task="first", max_new_tokens=2, do_sample=False)
        dense.generate(**batch, max_new_tokens=2, do_sample=False)
    for _ in range(rounds):
        for name in ("mediator", "dense"):
            start = time.perf_counter()
            with torch.no_grad():
                if name == "mediator":
                    mediator.generate(
                        **batch, task="first", max_new_tokens=new, min_new_tokens=new, do_sample=False
                    )
                else:
                    dense.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            rates[name].append(4 * new / (time.perf_counter() - start))
    return statistics.median(rates["mediator"]), statistics.median(rates["dense"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=0.25, help="the routed fraction of units (topk)")
    parser.add_argument("--arm", choices=["mediator", "ties", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm, args.work, args.output, args.threshold, warm=args.warm)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-mediator-"))
    arms = {
        "mediator": ("mediator", False),
        "mediator (model class imported first)": ("mediator", True),
        "ties": ("ties", False),
        "import of the model class alone": ("import", False),
    }
    try:
        build(work)
        results: dict[str, list[dict[str, float]]] = {label: [] for label in arms}
        for round_ in range(args.rounds):
            for index, (label, (name, warm)) in enumerate(arms.items()):
                output = work / f"{name}-{round_}-{index}"
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--arm",
                        name,
                        *(["--warm"] if warm else []),
                        "--work",
                        str(work),
                        "--output",
                        str(output),
                        "--threshold",
                        str(args.threshold),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                )
                results[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
        compiled = work / "mediator-0-0"
        one = folder_bytes(work / "base", "*.safetensors")
        mediator = folder_bytes(compiled)
        sparse = folder_bytes(compiled / "mediator", "experts-*")
        description = json.loads((compiled / "mediator_config.json").read_text())
        print(f"routed units: {description['routed_units']}")
        print(
            f"storage: one model {one} B; Mediator folder {mediator} B = {mediator / one:.3f} x one model "
            f"(sparse experts {sparse} B); four full models = 4.000 x; plain averaging = 1.000 x"
        )
        ties = {key: statistics.median(r[key] for r in results["ties"]) for key in ("seconds", "peak_bytes")}
        for label, runs in results.items():
            for key, unit, scale in (("seconds", "s", 1), ("peak_bytes", "MiB", 2**20)):
                median = statistics.median(r[key] for r in runs)
                print(
                    f"{label}: {key} {median / scale:.1f} {unit} = {median / ties[key]:.3f} x TIES "
                    f"(median of {args.rounds}: {[round(r[key] / scale, 1) for r in runs]})"
                )
        routed, dense = throughput(work, args.rounds)
        print(
            f"generate (batch 4, one routing choice, 16 new tokens): Mediator {routed:.1f} tok/s, dense model "
            f"{dense:.1f} tok/s, ratio {routed / dense:.3f}"
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
