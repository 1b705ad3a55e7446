"""Run by test_trainer.py under ``accelerate launch --num_processes 2``: 3 steps of 2 x 2 samples x 2 accumulated."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from paperpack.core.hf import tiny_causal_lm, training_args
from paperpack.o1_pruner import O1PrunerConfig, O1PrunerTrainer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ARGS, weighted_samples


def main() -> None:
    """Train on 2 ranks and save the weights and the world size under ``sys.argv[1]`` (main process)."""
    out = Path(sys.argv[1])
    model, tokenizer = tiny_causal_lm()
    args = training_args(
        out / "run",
        cls=O1PrunerConfig,
        **{
            **ARGS,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "train_sampling_strategy": "sequential",
            "optim": "sgd",
            "learning_rate": 0.1,
        },
    )
    trainer = O1PrunerTrainer(
        model=model,
        args=args,
        ref_model=copy.deepcopy(model),
        train_dataset=weighted_samples(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(trainer.accelerator.unwrap_model(trainer.model).state_dict(), out / "weights.pt")
        (out / "ranks.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes}))


if __name__ == "__main__":  # not on import: pytest --doctest-modules imports this file while collecting
    main()
    PartialState().destroy_process_group()  # join the process group's threads, or gloo may abort at exit
