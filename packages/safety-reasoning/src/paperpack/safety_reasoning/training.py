"""Internalization: supervised fine-tuning on (query -> reasoning + answer) with TRL's ``SFTTrainer``.

The examples of :func:`synthesize` (and of :func:`refusal_dataset`, the RT baseline) are conversational
prompt-completion rows, so ``SFTTrainer`` renders them with the tokenizer's chat template and computes the
loss on the assistant turn only (``completion_only_loss``, TRL's default for such data). The guidelines are
not in the prompt: the model learns to reason as they say without seeing them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from paperpack.core.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

__all__ = ["SFT_COLUMNS", "check_sft_rows", "sft_config", "sft_trainer"]

#: The columns the trainer reads: a user turn and an assistant turn.
SFT_COLUMNS = ("prompt", "completion")


def _turns(value: Any, role: str, where: str) -> None:
    if (
        not isinstance(value, list)
        or len(value) != 1
        or not isinstance(value[0], Mapping)
        or value[0].get("role") != role
        or not isinstance(value[0].get("content"), str)
    ):
        raise ConfigError(
            f"{where} must be a list with one {{'role': {role!r}, 'content': text}} message, got "
            f"{value!r:.80}"
        )


def check_sft_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check rows for :func:`sft_trainer`: a one-message user ``prompt`` and assistant ``completion`` each.

    Returns:
        The rows with only those two fields.

    Raises:
        ConfigError: naming the first bad row.
    """
    checked = []
    for number, row in enumerate(rows):
        if not isinstance(row, Mapping) or any(column not in row for column in SFT_COLUMNS):
            raise ConfigError(
                f"example {number} needs `prompt` and `completion` (the format synthesize and "
                "refusal_dataset "
                "write)"
            )
        _turns(row["prompt"], "user", f"example {number}: `prompt`")
        _turns(row["completion"], "assistant", f"example {number}: `completion`")
        checked.append({column: row[column] for column in SFT_COLUMNS})
    if not checked:
        raise ConfigError("the training data is empty")
    return checked


def sft_config(output_dir: str | os.PathLike[str], **fields: Any) -> SFTConfig:
    """TRL's ``SFTConfig`` with the machine's defaults (bf16 only on a capable GPU, no trackers), ``fields``.

    Examples:
        >>> from paperpack.safety_reasoning.training import sft_config
        >>> sft_config("out", max_steps=2).max_steps
        2
    """
    from trl.trainer.sft_config import SFTConfig

    from paperpack.core.hf import training_args

    return training_args(output_dir, cls=SFTConfig, **fields)


def sft_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset | Sequence[Mapping[str, Any]],
    args: SFTConfig,
    *,
    callbacks: Iterable[TrainerCallback] = (),
    peft_config: PeftConfig | None = None,
) -> SFTTrainer:
    """An ``SFTTrainer`` on synthesized (or RT) examples, with the tokenizer's chat template.

    Args:
        model: the model to fine-tune.
        tokenizer: its tokenizer; it must have a chat template. A pad token (its end-of-sequence token) is
            added when it has none.
        data: rows with ``prompt`` and ``completion`` (other columns are ignored).
        args: the ``SFTConfig`` (see :func:`sft_config`).
        callbacks: more Trainer callbacks.
        peft_config: a PEFT config (e.g. ``peft.LoraConfig``) to train an adapter instead of every weight;
            TRL wraps ``model`` with it (in place: pass a copy to keep the original).

    Raises:
        ConfigError: for a tokenizer without a chat template or rows in another format.
    """
    from datasets import Dataset
    from trl.trainer.sft_trainer import SFTTrainer

    from paperpack.core.data import ensure_pad_token

    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer has no chat template; the examples are conversations, rendered with the model's "
            "chat template (set `tokenizer.chat_template`)"
        )
    ensure_pad_token(tokenizer)
    rows = check_sft_rows(data)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=peft_config,
    )
