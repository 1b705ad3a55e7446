"""The size of ε against where it lands: a ρ sweep over seeds, Panacea beside random noise of the same norm.

Per seed, the demo's aligned model (``paperpack.panacea.experiment``, quick scale: alignment 300 steps,
fine-tuning 150 steps) is fine-tuned in each ``--finetuning`` setting:

- ``lora``: a fresh LoRA adapter (r=32, α=4 on q, k, v: the paper's scripts), ε and noise on the adapter;
- ``full``: every weight, ε and noise on every weight (embeddings included);

and, in each setting, SFT once, then for every ρ of ``--rhos``: SFT's weights plus random noise of norm ρ, and
Panacea (ρ, λ) for every λ of ``--lams``, evaluated before and after its last-step ε. Each row gives ρ relative to the norm of
the weights ε perturbs, HS, HS+ and accuracy (the demo's metrics). Rows are printed as they come and appended
to ``--output`` (JSON lines), so an interrupted sweep keeps what it measured.

Usage:
    python packages/panacea/benchmarks/sweep_rho.py [--seeds 0 1] [--finetuning lora full]
        [--rhos 0.25 0.5 1 2] [--lams 1] [--output sweep.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import tempfile
import time
from typing import Any, cast

from torch import nn

from paperpack.panacea.experiment import ExperimentSettings, _Run
from paperpack.panacea.perturbation import apply_perturbation, global_norm, random_perturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--finetuning", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    parser.add_argument("--rhos", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--lams", type=float, nargs="+", default=[1.0], help="λ of the Panacea runs")
    parser.add_argument("--no-noise", action="store_true", help="skip the noise arms")
    parser.add_argument("--learning-rate", type=float, nargs="+", default=None, help="one per --finetuning")
    parser.add_argument("--align-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--output", default="sweep_rho.jsonl")
    args = parser.parse_args()
    rates = args.learning_rate or [ExperimentSettings().learning_rate] * len(args.finetuning)
    if len(rates) != len(args.finetuning):
        parser.error("give one --learning-rate per --finetuning setting")
    print("| seed | setting | arm | ρ | ρ/‖w_ε‖ | HS % | HS+ % | accuracy % | CPU s |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)

    def report(
        run: _Run,
        model: nn.Module,
        setting: str,
        arm: str,
        *,
        rho: float,
        weights: float,
        cpu: float,
        lam: float = 0.0,
    ) -> None:
        row = run.evaluate(model, arm, "sweep", rho, 0.0)
        record: dict[str, Any] = {
            "seed": run.seed,
            "setting": setting,
            "learning_rate": run.settings.learning_rate,
            "lam": lam,
            "arm": arm,
            "rho": rho,
            "relative_rho": rho / weights if weights else 0.0,
            "harmful_score": row.harmful_score,
            "harmful_score_plus": row.harmful_score_plus,
            "accuracy": row.accuracy,
            "cpu_seconds": cpu,
        }
        print(
            f"| {run.seed} | {setting} | {arm} | {rho:g} | {record['relative_rho']:.3g} | "
            f"{row.harmful_score:.1f} | {row.harmful_score_plus:.1f} | {row.accuracy:.1f} | {cpu:.1f} |",
            flush=True,
        )
        with open(args.output, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    with tempfile.TemporaryDirectory(prefix="panacea-sweep-") as folder:
        for seed in args.seeds:
            base = ExperimentSettings(
                seeds=(seed,), align_steps=args.align_steps, finetune_steps=args.finetune_steps
            )
            run = _Run(seed, base, folder)
            report(run, run.aligned, "base", "aligned", rho=0.0, weights=0.0, cpu=0.0)
            for setting, rate in zip(args.finetuning, rates, strict=True):
                run.settings = dataclasses.replace(base, finetuning=setting, learning_rate=rate)
                start = time.process_time()
                sft, _ = run.sft()
                cpu = time.process_time() - start
                weights = global_norm(p.detach() for p in sft.parameters() if p.requires_grad)
                report(run, sft, setting, "SFT", rho=0.0, weights=weights, cpu=cpu)
                for rho in [] if args.no_noise else args.rhos:
                    noisy = copy.deepcopy(sft)
                    apply_perturbation(noisy, random_perturbation(noisy, rho, seed=seed))
                    report(run, noisy, setting, "SFT + noise", rho=rho, weights=weights, cpu=0.0)
                for rho, lam in itertools.product(args.rhos, args.lams):
                    start = time.process_time()
                    trainer, _ = run.panacea(rho, lam)
                    cpu = time.process_time() - start
                    model = cast(nn.Module, trainer.model)
                    weights = global_norm(p.detach() for p in model.parameters() if p.requires_grad)
                    report(
                        run,
                        model,
                        setting,
                        f"Panacea λ={lam:g} before ε",
                        rho=rho,
                        weights=weights,
                        cpu=cpu,
                        lam=lam,
                    )
                    apply_perturbation(model, trainer.perturbation or {})
                    report(
                        run, model, setting, f"Panacea λ={lam:g}", rho=rho, weights=weights, cpu=cpu, lam=lam
                    )


if __name__ == "__main__":
    main()
