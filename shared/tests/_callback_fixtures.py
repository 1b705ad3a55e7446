"""A stateful callback and a tiny dataset shared by the resume tests and the distributed script."""

from __future__ import annotations

import torch
from datasets import Dataset

from paperpack.core.hf import StatefulCallback


class ParameterTrace(StatefulCallback):
    """Records the mean of every trainable parameter at every step: its state depends on the whole run."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.trace: list[torch.Tensor] = []
        self.restored_from: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        means = torch.stack([p.detach().float().mean() for p in model.parameters() if p.requires_grad])
        self.steps.append(state.global_step)
        self.trace.append(means)

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if state.global_step:
            self.restored_from = state.global_step

    def state_dict(self):
        return {"steps": list(self.steps), "trace": list(self.trace), "meta": {"version": 1}}

    def load_state_dict(self, state):
        self.steps = list(state["steps"])
        self.trace = list(state["trace"])


def tiny_dataset(tokenizer, rows: int = 24) -> Dataset:
    texts = [f"record {i}: the value of key {i % 7} is {i * 3 % 11}" for i in range(rows)]
    encoded = tokenizer(texts, padding="max_length", max_length=16, truncation=True)
    return Dataset.from_dict(
        {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": [
                [t if m else -100 for t, m in zip(ids, mask, strict=True)]
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
            ],
        }
    )
