"""Runs HRP under `accelerate launch` (2 CPU processes): hrp_initialize on a regression and the Trainer route.

Usage: accelerate launch --multi_gpu --num_processes 2 ddp_script.py OUTPUT_DIR
Each rank writes the adapters it ends with; the test compares them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer

from paperpack.core.checkpoints import save_state_dict
from paperpack.core.hf import default_corpus, tiny_causal_lm, training_args
from paperpack.hrp_lora import HRPConfig, hrp_initialize, hrp_initialize_trainer


def regression_batches(steps: int = 4, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same full batches on every rank (and in the single-process comparison), seeded."""
    generator = torch.Generator().manual_seed(7)
    target = torch.randn(16, 16, generator=generator)
    batches = []
    for _ in range(steps):
        x = torch.randn(size, 16, generator=generator)
        batches.append((x, x @ target.T))
    return batches


def regression_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(16, 16))


def mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


REGRESSION = LoraConfig(r=2, target_modules=["0"])
REGRESSION_HRP = HRPConfig(preheat_rank=8, preheat_steps=4, preheat_lr=1e-2)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if "lora_" in n}


def main() -> None:
    output = Path(sys.argv[1])
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    shards = [(x[rank::world], y[rank::world]) for x, y in regression_batches()]
    model = hrp_initialize(regression_model(), REGRESSION, shards, REGRESSION_HRP, loss_fn=mse)
    save_state_dict(adapter_state(model), output / f"regression-rank{rank}.safetensors")

    lm, tokenizer = tiny_causal_lm()
    encoded = tokenizer(default_corpus(32, seed=3), truncation=True, max_length=24)
    trainer = Trainer(
        model=get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])),
        args=training_args(
            output / "run", max_steps=2, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True
        ),
        train_dataset=Dataset.from_dict({"input_ids": encoded["input_ids"]}),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    hrp_initialize_trainer(trainer, HRPConfig(preheat_steps=3, preheat_lr=1e-3))
    save_state_dict(adapter_state(trainer.model), output / f"trainer-rank{rank}.safetensors")
    (output / f"world{rank}.txt").write_text(str(world))


if __name__ == "__main__":
    main()
    PartialState().destroy_process_group()  # join the process group's threads, or gloo may abort at exit
