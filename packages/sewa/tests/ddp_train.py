"""Trains tiny_causal_lm() with SeWACallback under `accelerate launch`; each rank writes what it selected.

Usage: accelerate launch --cpu --num_processes 2 ddp_train.py OUTPUT_DIR [offload]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer

from paperpack.core.checkpoints import save_state_dict
from paperpack.core.hf import default_corpus, tiny_causal_lm, training_args
from paperpack.sewa import SeWACallback, SeWAConfig
from paperpack.sewa.callback import trainable_state


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
    save_state_dict(trainable_state(model), output / f"rank{rank}.safetensors")
    summary = {
        "world_size": args.world_size,
        "steps": callback.store.steps,
        "indices": callback.result.indices,
        "probabilities": callback.result.probabilities.tolist(),
    }
    (output / f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
