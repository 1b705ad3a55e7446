"""Run by test_distributed.py under `accelerate launch --num_processes 2`: two Panacea steps on two ranks, then
each rank saves its weights, its ε per step and its final ε."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
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
    "harmful_loss_clamp": None,
    "panacea_lambda": 0.5,
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "disable_tqdm": True,
}


class RecordEpsilon(TrainerCallback):
    def __init__(self) -> None:
        self.trainer: PanaceaTrainer | None = None
        self.epsilons: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trainer is not None and self.trainer.perturbation is not None
        self.epsilons.append(self.trainer.perturbation)


def run(output: Path, batch_size: int) -> dict[str, Any]:
    model, tokenizer = tiny_causal_lm()
    args = training_args(output, cls=PanaceaConfig, per_device_train_batch_size=batch_size, **SETTINGS)
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
    return {"weights": weights, "epsilons": recorder.epsilons, "rank": trainer.accelerator.process_index}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    result = run(folder / "run", batch_size=2)
    torch.save(result, folder / f"rank{result['rank']}.pt")
