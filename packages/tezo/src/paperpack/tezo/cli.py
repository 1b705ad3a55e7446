r"""``paperpack tezo finetune``: zeroth-order fine-tuning of a causal LM from the command line.

Example::

    paperpack tezo finetune --model ./my-model --data train.jsonl --output ./tezo-run \\
        --zo-method tezo_adam --zo-rank 8 --learning-rate 1e-5 --max-steps 2000 \\
        --per-device-train-batch-size 16

The flags are the fields of :class:`~paperpack.tezo.ZOConfig` (``TrainingArguments`` plus the ``zo_*``
settings), in both spellings, and paperpack's shared vocabulary (``--model``, ``--data``, ``--output``, ...).
The output follows the one layout of every training command: the fine-tuned model and tokenizer at the top of
``--output`` with ``training_args.json`` and ``tezo_summary.json``, and the Trainer's ``checkpoint-N`` folders
beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from paperpack.core.commands import (
    TRAINING_COMMAND_FLAGS,
    TRAINING_COMMAND_REQUIRED,
    add_shared_arguments,
    add_training_arguments,
    check_training_output,
)
from paperpack.core.errors import ConfigError
from paperpack.core.subcommands import add_subcommand

__all__ = ["configure_parser"]

COMMAND = "tezo finetune"
SUMMARY_FILE = "tezo_summary.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``finetune`` subcommand to ``paperpack tezo`` (its flags are built when it is used)."""
    commands = parser.add_subparsers(dest="tezo_command", metavar="COMMAND")
    add_subcommand(
        commands,
        "finetune",
        _finetune_flags,
        help="fine-tune a causal LM with TeZO, MeZO or LOZO (forward passes only)",
        description="Zeroth-order fine-tuning: two forward passes per step, no backward, optimizer state of "
        "r-vectors per matrix for TeZO. Data: JSON Lines with a 'text' field (causal-LM loss on all tokens).",
    )


def _finetune_flags(tune: argparse.ArgumentParser) -> None:
    from paperpack.tezo.config import ZOConfig

    names = add_training_arguments(tune, ZOConfig)
    add_shared_arguments(
        tune,
        *TRAINING_COMMAND_FLAGS,
        "eval_data",
        "max_length",
        required=TRAINING_COMMAND_REQUIRED,
    )
    tune.set_defaults(handler=_finetune, training_fields=names)


def _finetune(args: argparse.Namespace) -> int:
    from paperpack.core.data import CausalLMCollator, read_jsonl, tokenize_texts
    from paperpack.core.hf import ArgumentsAsJson, command_training_args, load_model_and_tokenizer
    from paperpack.tezo.config import ZOConfig

    # Every check before the first side effect.
    inputs = [args.model, args.data, *([args.eval_data] if args.eval_data else [])]
    output = check_training_output(
        args.output, command=COMMAND, overwrite=args.overwrite, resume=args.resume, inputs=inputs
    )
    fixed: dict[str, Any] = {"save_strategy": "steps", "logging_steps": 10}
    if args.eval_data:
        fixed["eval_strategy"] = "steps"
    config = command_training_args(args, args.training_fields, cls=ZOConfig, output=args.output, **fixed)
    texts = [record["text"] for record in read_jsonl(args.data)]
    eval_texts = [record["text"] for record in read_jsonl(args.eval_data)] if args.eval_data else None
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    collator = CausalLMCollator(tokenizer)
    train = tokenize_texts(tokenizer, texts, max_length=args.max_length)
    evaluation = tokenize_texts(tokenizer, eval_texts, max_length=args.max_length) if eval_texts else None

    existed = output.folder.exists()
    output.open()
    try:
        summary = _train(
            config=config,
            model=model,
            tokenizer=tokenizer,
            collator=collator,
            train=train,
            evaluation=evaluation,
            output=output,
            arguments_json=ArgumentsAsJson(),
        )
    except ConfigError:
        # A run that diverged leaves nothing behind: not a model of infinities, nor its checkpoints. (A crash
        # keeps them, for --resume.)
        _discard(output.folder, existed=existed, resumed=output.resume_from is not None)
        raise
    print(
        f"wrote {output.folder}: {config.zo_method}, {summary['steps']} steps, train loss "
        f"{summary['train_loss']:.4f}, ZO state {summary['zo_state_bytes']} bytes"
    )
    return 0


def _train(
    *,
    config: Any,
    model: Any,
    tokenizer: Any,
    collator: Any,
    train: Any,
    evaluation: Any,
    output: Any,
    arguments_json: Any,
) -> dict[str, Any]:
    from paperpack.core.files import atomic_write_text
    from paperpack.core.hf import save_trained_model
    from paperpack.core.validation import check_finite
    from paperpack.tezo.optim import unwrap_optimizer, zo_state_bytes
    from paperpack.tezo.trainer import ZOTrainer

    trainer = ZOTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=[arguments_json],
    )
    resume = str(output.resume_from) if output.resume_from is not None else None
    result = trainer.train(resume_from_checkpoint=resume)
    optimizer = unwrap_optimizer(trainer.optimizer)
    hint = "lower `learning_rate`"
    check_finite("the training loss", result.training_loss, hint=hint)
    check_finite("the trained weights", model.state_dict(), hint=hint)
    if optimizer.zo_skipped:
        raise ConfigError(
            f"the run diverged: {optimizer.zo_skipped} of {optimizer.zo_step} steps had a projected gradient "
            "that is not finite and were skipped; lower `learning_rate`"
        )
    summary: dict[str, Any] = {
        "method": config.zo_method,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "zo_state_bytes": zo_state_bytes(optimizer),
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    if evaluation is not None:
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    atomic_write_text(Path(output.folder) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _discard(folder: Path, *, existed: bool, resumed: bool) -> None:
    """Remove what this run wrote: the folder it created, or what it put in a folder that was there."""
    from paperpack.core.files import remove_path

    if resumed:
        return  # the earlier run's checkpoints are the user's to resume from again
    if not existed:
        remove_path(folder)
        return
    for entry in folder.iterdir():
        remove_path(entry)
