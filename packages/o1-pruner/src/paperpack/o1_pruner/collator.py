"""Batches of weighted samples: prompt and completion ids joined, the prompt and padding masked out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.o1_pruner.loss import IGNORE_INDEX

__all__ = ["O1PrunerCollator"]


@dataclass
class O1PrunerCollator:
    """Turn ``{"prompt_ids", "completion_ids", "weight"}`` records into a right-padded batch.

    Returns ``input_ids`` (prompt + completion), ``attention_mask``, ``labels`` (the completion's ids, -100
    on the prompt and padding, so only the completion y is scored) and ``weight``; when the records carry
    ``ref_logps`` (the reference's log-probability of each completion token, stored by pre-sampling), also
    ``ref_logps``, ``(B, T − 1)``, aligned with :func:`~paperpack.o1_pruner.loss.token_log_probs` (0
    elsewhere).

    Args:
        pad_token_id: the id that fills padding (masked out, so any id works).
    """

    pad_token_id: int

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """Collate ``records`` into one batch."""
        rows = []
        for index, record in enumerate(records):
            prompt, completion = list(record["prompt_ids"]), list(record["completion_ids"])
            if not completion:
                raise ConfigError(f"sample {index} of the batch has an empty completion: nothing to score")
            rows.append((prompt, completion))
        width = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(rows):
            ids = prompt + completion
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, len(prompt) : len(ids)] = torch.tensor(completion)
            attention[row, : len(ids)] = 1
        weight = torch.tensor([float(record["weight"]) for record in records], dtype=torch.float32)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "weight": weight}
        if records and "ref_logps" in records[0]:
            ref = torch.zeros((len(rows), width - 1), dtype=torch.float32)
            for row, ((prompt, completion), record) in enumerate(zip(rows, records, strict=True)):
                values = list(record["ref_logps"])
                if len(values) != len(completion):
                    raise ConfigError(
                        f"sample {row} of the batch has {len(values)} ref_logps for {len(completion)} "
                        "completion tokens"
                    )
                # token_log_probs scores the label at t + 1 at position t; the completion starts at P.
                ref[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)] = torch.tensor(values)
            batch["ref_logps"] = ref
        return batch
