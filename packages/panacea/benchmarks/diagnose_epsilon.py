"""Where the demo's accuracy goes: HS and accuracy along Panacea's ε, and with ε restricted to parameter groups.

One seed of the demo's earlier setting at its quick scale (every weight fine-tuned and perturbed, no
``base_knowledge``, learning rate 1e-3; alignment 300 steps, fine-tuning 150 steps; see
``paperpack.panacea.experiment``): Panacea (ρ=1, λ=1) is trained once, then its last-step ε is

- scaled: the weights w + s·ε for s in ``--scales`` (‖s·ε‖ = s·ρ), no retraining;
- restricted, at s = 1: only ε's entries on the token embedding, on the decoder layers, or on the rest
  (final norm and output head);

and a second Panacea run trains with ε restricted to the decoder layers (``perturb_parameters=["layers\\."]``)
and is evaluated before and after its own ε. HS, HS+ and accuracy are the demo's.

Usage:
    python packages/panacea/benchmarks/diagnose_epsilon.py [--seed 0] [--scales 0 0.1 0.25 0.5 0.75 1]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from typing import cast

from transformers import LlamaForCausalLM

from paperpack.panacea.experiment import ExperimentSettings, _Run
from paperpack.panacea.perturbation import apply_perturbation, global_norm

GROUPS = {
    "embedding": lambda name: "embed_tokens" in name,
    "decoder layers": lambda name: ".layers." in name,
    "rest (final norm, head)": lambda name: "embed_tokens" not in name and ".layers." not in name,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()
    settings = ExperimentSettings(  # the demo's earlier setting: every weight fine-tuned and perturbed
        seeds=(args.seed,),
        align_steps=300,
        finetune_steps=150,
        finetuning="full",
        base_knowledge=False,
        learning_rate=1e-3,
    )
    print("| weights | ‖ε‖ | HS % | HS+ % | accuracy % |\n|---|---|---|---|---|", flush=True)

    def report(model: LlamaForCausalLM, label: str, norm: float) -> None:
        row = run.evaluate(model, label, "diagnostic", norm, 0.0)
        print(
            f"| {label} | {norm:.3g} | {row.harmful_score:.1f} | {row.harmful_score_plus:.1f} "
            f"| {row.accuracy:.1f} |",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="panacea-diagnose-") as folder:
        run = _Run(args.seed, settings, folder)
        trainer, _ = run.panacea(1.0, 1.0)
        trained = cast(LlamaForCausalLM, trainer.model)
        epsilon = trainer.perturbation or {}
        for scale in args.scales:
            model = copy.deepcopy(trained)
            apply_perturbation(model, epsilon, scale=scale)
            report(model, f"Panacea (ρ=1, λ=1) + {scale:g}·ε", scale * global_norm(epsilon.values()))
        for group, selects in GROUPS.items():
            part = {name: t for name, t in epsilon.items() if selects(name)}
            model = copy.deepcopy(trained)
            apply_perturbation(model, part)
            share = global_norm(part.values())
            report(model, f"Panacea (ρ=1, λ=1) + ε on the {group} only", share)
        trainer, _ = run.panacea(1.0, 1.0, perturb_parameters=[r"layers\."])
        model = cast(LlamaForCausalLM, trainer.model)
        report(model, "Panacea (ρ=1, λ=1, ε on decoder layers) before ε", 0.0)
        epsilon = trainer.perturbation or {}
        apply_perturbation(model, epsilon)
        report(model, "Panacea (ρ=1, λ=1, ε on decoder layers)", global_norm(epsilon.values()))


if __name__ == "__main__":
    main()
