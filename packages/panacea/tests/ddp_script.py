"""Run by test_distributed.py under `accelerate launch --num_processes 2`: two Panacea steps on two ranks for each
case of pass 2, then each rank saves its weights and its ε per step."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import DataCollatorForLanguageModeling, TrainerCallback

from paperpack.core.hf import tiny_causal_lm, training_args
from paperpack.panacea import PanaceaConfig, PanaceaTrainer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import HARMFUL_LINES, TASK_LINES, tokenize

# Shared with test_distributed.py: per rank, half the batch of the single-process run it is compared with.
SETTINGS: dict[str, Any] = {
    "max_steps": 2,
    "optim": "sgd",
    "learning_rate": 0.1,
    "max_grad_norm": 0.0,
    "panacea_lambda": 0.5,
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "disable_tqdm": True,
}


# Pass 2 (in halves, the default for full fine-tuning, unless said): without a clamp; with the clamp on but not
# reached (decided first on the mean loss across ranks); in one piece; above the clamp (no backward in pass 2:
# the task gradient alone is averaged across ranks).
CASES: dict[str, dict[str, Any]] = {
    "no-clamp": {"harmful_loss_clamp": None},
    "clamp-on": {"harmful_loss_clamp": 100.0},
    "one-piece": {"harmful_loss_clamp": 100.0, "perturbed_pass_pieces": 1},
    "clamped": {"harmful_loss_clamp": 1.0},
}


class RecordEpsilon(TrainerCallback):
    def __init__(self) -> None:
        self.trainer: PanaceaTrainer | None = None
        self.epsilons: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trainer is not None and self.trainer.perturbation is not None
        self.epsilons.append(self.trainer.perturbation)


def run(output: Path, batch_size: int, case: str) -> dict[str, Any]:
    model, tokenizer = tiny_causal_lm()
    settings = {**SETTINGS, **CASES[case]}
    args = training_args(output, cls=PanaceaConfig, per_device_train_batch_size=batch_size, **settings)
    recorder = RecordEpsilon()
    trainer = PanaceaTrainer(
        model=model,
        args=args,
        train_dataset=tokenize(tokenizer, TASK_LINES),
        harmful_dataset=tokenize(tokenizer, HARMFUL_LINES),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    weights = {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }
    clamped = [entry["harmful_loss_clamped"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "weights": weights,
        "epsilons": recorder.epsilons,
        "clamped": clamped,
        "rank": trainer.accelerator.process_index,
    }


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    results = {case: run(folder / case, batch_size=2, case=case) for case in CASES}
    torch.save(results, folder / f"rank{results['no-clamp']['rank']}.pt")
    PartialState().destroy_process_group()  # join the process group's threads, or gloo may abort at exit
