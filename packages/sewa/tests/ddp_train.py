"""Trains tiny_causal_lm() with SeWACallback under `accelerate launch`; each rank writes what it selected.

Then trains a small batch-norm network twice (the averaged statistics, and update_bn=True); each rank writes
its weights and statistics. `BatchNormClassifier` is also what test_batch_norm.py trains.

Usage: accelerate launch --cpu --num_processes 2 ddp_train.py OUTPUT_DIR [offload]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from torch import nn
from transformers import DataCollatorForLanguageModeling, Trainer, default_data_collator

from paperpack.core.checkpoints import save_state_dict
from paperpack.core.hf import default_corpus, tiny_causal_lm, training_args
from paperpack.sewa import SeWACallback, SeWAConfig
from paperpack.sewa.callback import snapshot_state


class BatchNormClassifier(nn.Module):
    """Linear - BatchNorm1d - ReLU - Linear, with a Trainer-style forward (keyword inputs, a loss)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.body(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def batch_norm_data(size: int = 96) -> Dataset:
    """Inputs far from batch norm's initial statistics (0, 1), three classes."""
    generator = torch.Generator().manual_seed(1)
    x = 2.0 + 3.0 * torch.randn(size, 6, generator=generator)
    labels = (x[:, 0] > 2.0).long() + (x[:, 1] > 2.0).long()
    return Dataset.from_dict({"x": x.tolist(), "labels": labels.tolist()})


def batch_norm_trainer(folder: Path, callback: SeWACallback, *, max_steps: int) -> Trainer:
    """A Trainer of a fresh BatchNormClassifier on batch_norm_data() with ``callback`` (batch 8, lr 0.05)."""
    args = training_args(
        folder,
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=BatchNormClassifier(),
        args=args,
        train_dataset=batch_norm_data(),
        data_collator=default_data_collator,
        callbacks=[callback],
    )


def train_batch_norm(output: Path, update_bn: bool) -> None:
    callback = SeWACallback(
        SeWAConfig(k=2, iterations=4, mc_samples=2), window=4, snapshot_every=1, update_bn=update_bn
    )
    trainer = batch_norm_trainer(output / f"bn-run-{update_bn}", callback, max_steps=6)
    trainer.train()
    state = trainer.model.state_dict()
    save_state_dict(state, output / f"rank{trainer.args.process_index}-bn-{update_bn}.safetensors")


def main() -> None:
    output = Path(sys.argv[1])
    offload = output / "snapshots" if "offload" in sys.argv[2:] else None
    model, tokenizer = tiny_causal_lm()
    encoded = tokenizer(default_corpus(64, seed=3), truncation=True, max_length=24)
    dataset = Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )
    callback = SeWACallback(
        SeWAConfig(k=2, iterations=4, mc_samples=2), window=4, snapshot_every=1, offload_dir=offload
    )
    args = training_args(
        output / "run",
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[callback],
    )
    trainer.train()
    rank = args.process_index
    assert callback.result is not None, "no selection was made"
    save_state_dict(snapshot_state(model), output / f"rank{rank}.safetensors")
    summary = {
        "world_size": args.world_size,
        "steps": callback.store.steps,
        "indices": callback.result.indices,
        "probabilities": callback.result.probabilities.tolist(),
    }
    (output / f"rank{rank}.json").write_text(json.dumps(summary))
    for update_bn in (False, True):
        train_batch_norm(output, update_bn)


if __name__ == "__main__":
    main()
    PartialState().destroy_process_group()  # join the process group's threads, or gloo may abort at exit
