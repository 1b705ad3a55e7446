"""Run by test_trainer.py under `accelerate launch --num_processes 2`: three ZOTrainer steps, then each rank
saves its weights and the κ it measured locally and applied."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import DataCollatorForLanguageModeling, TrainerCallback

from paperpack.core.hf import default_corpus, tiny_causal_lm, training_args
from paperpack.tezo import ZOConfig, ZOTrainer
from paperpack.tezo.optim import unwrap_optimizer


class RecordKappa(TrainerCallback):
    def __init__(self) -> None:
        self.local: list[float] = []
        self.applied: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.local.append(unwrap_optimizer(kwargs["optimizer"])._pending_kappa)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.applied.append(unwrap_optimizer(kwargs["optimizer"]).last_kappa)


def main(output: Path) -> None:
    model, tokenizer = tiny_causal_lm()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    lines = default_corpus(num_lines=32, seed=1)
    data = [{"input_ids": tokenizer(line, truncation=True, max_length=24)["input_ids"]} for line in lines]
    args = training_args(
        output / "run", cls=ZOConfig, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        save_strategy="no", zo_method="tezo_adam", zo_rank=4, disable_tqdm=True,
    )  # fmt: skip
    recorder = RecordKappa()
    trainer = ZOTrainer(
        model=model, args=args, train_dataset=data, callbacks=[recorder],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )  # fmt: skip
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }
    payload = {"weights": weights, "initial": initial, "local": recorder.local, "applied": recorder.applied}
    torch.save(payload, output / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    PartialState().destroy_process_group()  # join the process group's threads, or gloo may abort at exit
