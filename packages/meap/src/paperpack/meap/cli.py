r"""``paperpack meap pretrain`` and ``paperpack meap sft``: MEAP training of a model folder on a jsonl file.

Thin wrappers over ``transformers.Trainer`` + :class:`MEAPCollator` and ``trl.SFTTrainer`` +
:class:`MEAPSFTCollator`, for users who do not write Python::

    paperpack meap pretrain --model ./my-model --data corpus.jsonl --output ./meap-run \
        --mask-ratio 0.15 --learning-rate 4e-4 --max-steps 1000

The flags follow paperpack's convention: the fields of ``TrainingArguments`` (``pretrain``) or
``trl.SFTConfig`` (``sft``) in both spellings, the fields of :class:`~paperpack.meap.MEAPConfig`, and the
shared vocabulary (``--model``, ``--data``, ``--output``, ``--resume``, ...). The output follows the one
layout of every training command: the trained model and tokenizer at the top of ``--output`` with
``training_args.json``, the Trainer's ``checkpoint-N`` folders beside them. A subcommand's flags are built
when it is used, so ``paperpack meap --help`` does not import transformers.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from paperpack.core.arguments import add_config_arguments, add_flag, config_overrides
from paperpack.core.commands import (
    TRAINING_COMMAND_FLAGS,
    TRAINING_COMMAND_REQUIRED,
    SharedFlag,
    add_shared_arguments,
    add_training_arguments,
    check_training_output,
)
from paperpack.core.errors import ConfigError
from paperpack.core.subcommands import add_subcommand

__all__ = ["configure_parser"]

logger = logging.getLogger(__name__)

_SHARED: tuple[SharedFlag, ...] = (*TRAINING_COMMAND_FLAGS, "max_length")
_MEAP_TITLE = "MEAP masking (paperpack.meap.MEAPConfig; `seed` is the training --seed)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``pretrain`` and ``sft`` subcommands to ``paperpack meap``."""
    parser.description = "MEAP: mask a fraction of input tokens and train with the plain next-token loss."
    commands = parser.add_subparsers(dest="meap_command", metavar="{pretrain,sft}")
    add_subcommand(
        commands,
        "pretrain",
        _pretrain_flags,
        help="causal-LM training with MEAP on a jsonl file of {'text': ...} records",
        description="Tokenize the text field, join the records with EOS, cut blocks of --max-length tokens "
        "and train with transformers.Trainer and MEAPCollator.",
    )
    add_subcommand(
        commands,
        "sft",
        _sft_flags,
        help="supervised fine-tuning with MEAP on a jsonl file of prompt/completion or messages records",
        description="Train with trl.SFTTrainer and MEAPSFTCollator: records are {'prompt', 'completion'} "
        "(loss on the completion) or {'messages': [...]} (loss on the assistant turns; the tokenizer needs a "
        "chat template with generation markers).",
    )


def _common_flags(
    parser: argparse.ArgumentParser, args_class: type[Any], *, meap_exclude: tuple[str, ...]
) -> None:
    from paperpack.meap.config import MEAPConfig

    training = add_training_arguments(parser, args_class)
    meap = add_config_arguments(parser, MEAPConfig, exclude=("seed", *meap_exclude), title=_MEAP_TITLE)
    add_flag(
        parser,
        "add_mask_token",
        bool,
        default=True,
        help="add the mask token to the tokenizer and resize the embeddings; with --no-add-mask-token the "
        "tokenizer must already have it",
    )
    add_shared_arguments(
        parser,
        *_SHARED,
        required=TRAINING_COMMAND_REQUIRED,
        defaults={"max_length": 1024, "dtype": "float32"},
    )
    parser.set_defaults(training_fields=training, meap_fields=meap)


def _pretrain_flags(parser: argparse.ArgumentParser) -> None:
    from transformers import TrainingArguments

    _common_flags(
        parser, TrainingArguments, meap_exclude=("sft_mask_ratio", "min_answer_tokens", "sft_layout")
    )
    add_flag(parser, "text_field", str, default="text", help="the jsonl field holding the text")
    parser.set_defaults(handler=_pretrain)


def _sft_flags(parser: argparse.ArgumentParser) -> None:
    from trl.trainer.sft_config import SFTConfig

    _common_flags(parser, SFTConfig, meap_exclude=("mask_ratio",))
    parser.set_defaults(handler=_sft)


def _check(
    args: argparse.Namespace, command: str, args_class: type[Any], **fixed: Any
) -> tuple[Any, Any, Any]:
    """Every check before the first side effect: the output rule, the training arguments, the MEAP config."""
    from paperpack.core.hf import command_training_args
    from paperpack.meap.config import MEAPConfig

    output = check_training_output(
        args.output,
        command=command,
        overwrite=args.overwrite,
        resume=args.resume,
        inputs=[args.model, args.data],
    )
    arguments = command_training_args(
        args, args.training_fields, cls=args_class, output=args.output, logging_steps=10, **fixed
    )
    config = MEAPConfig(**config_overrides(args, args.meap_fields), seed=arguments.seed)
    return output, arguments, config


def _load(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """Load the model and make sure its tokenizer has the mask token."""
    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.meap.tokens import add_mask_token, mask_token_id

    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    if args.add_mask_token:
        add_mask_token(tokenizer, model, config.mask_token)
    else:
        mask_token_id(tokenizer, config.mask_token)
    return model, tokenizer


def _train(trainer: Any, output: Any, tokenizer: Any) -> int:
    from paperpack.core.hf import save_trained_model
    from paperpack.core.validation import check_finite

    trainer.train(resume_from_checkpoint=str(output.resume_from) if output.resume_from is not None else None)
    check_finite("the trained weights", trainer.model.state_dict(), hint="lower `learning_rate`")
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    logger.info("saved the trained model to %s", output.folder)
    print(f"saved {output.folder}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from paperpack.core.data import read_jsonl
    from paperpack.core.hf import ArgumentsAsJson
    from paperpack.meap.callback import MEAPEpochCallback
    from paperpack.meap.collator import MEAPCollator

    output, arguments, config = _check(args, "meap pretrain", TrainingArguments)
    records = read_jsonl(args.data, required=(args.text_field,))
    model, tokenizer = _load(args, config)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token to separate the records with")
    stream: list[int] = []
    for record in records:
        stream += tokenizer(record[args.text_field], add_special_tokens=True)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + args.max_length] for i in range(0, len(stream), args.max_length)]
    blocks = [block for block in blocks if len(block) > 1]
    logger.info("%d records -> %d blocks of up to %d tokens", len(records), len(blocks), args.max_length)

    collator = MEAPCollator(tokenizer, config)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_dict({"input_ids": blocks}),
        data_collator=collator,
        callbacks=[MEAPEpochCallback(collator), ArgumentsAsJson()],
    )
    output.open()  # the first side effect
    return _train(trainer, output, tokenizer)


def _sft_records(path: str) -> tuple[list[dict[str, Any]], bool]:
    from paperpack.core.data import read_jsonl

    records = read_jsonl(path, required=())
    conversational = "messages" in records[0]
    for number, record in enumerate(records, start=1):
        if conversational and not isinstance(record.get("messages"), list):
            raise ConfigError(
                f"{path}: record {number} needs a 'messages' list like record 1; it has {sorted(record)}"
            )
        if conversational and not any(
            isinstance(turn, dict) and turn.get("role") == "assistant" for turn in record["messages"]
        ):
            raise ConfigError(
                f"{path}: record {number} has no assistant turn, so nothing to learn from: the loss falls on "
                "the assistant turns only"
            )
        if not conversational and not all(
            isinstance(record.get(key), str) for key in ("prompt", "completion")
        ):
            raise ConfigError(
                f"{path}: record {number} needs string fields 'prompt' and 'completion' (or a 'messages' "
                f"list); it has {sorted(record)}"
            )
    keep = ("messages",) if conversational else ("prompt", "completion")
    return [{key: record[key] for key in keep} for record in records], conversational


def _sft(args: argparse.Namespace) -> int:
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    from paperpack.core.hf import ArgumentsAsJson
    from paperpack.meap.callback import MEAPEpochCallback
    from paperpack.meap.collator import MEAPSFTCollator

    records, conversational = _sft_records(args.data)
    output, arguments, config = _check(
        args,
        "meap sft",
        SFTConfig,
        assistant_only_loss=conversational,
        completion_only_loss=None if conversational else True,
    )
    model, tokenizer = _load(args, config)
    collator = MEAPSFTCollator(tokenizer, config)
    folder = Path(args.output)
    existed = folder.exists()
    try:
        trainer = SFTTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            data_collator=collator,
            callbacks=[MEAPEpochCallback(collator), ArgumentsAsJson()],
        )
        train_dataset: Any = trainer.train_dataset  # a datasets.Dataset here: the records are a list
        if len(train_dataset) == 0:
            raise ConfigError(
                f"`max_length` {arguments.max_length} leaves no example of {args.data} with a token to "
                "learn: TRL drops the examples whose completion (or assistant turns) truncation removed; "
                "raise it"
            )
    except BaseException:
        # Building the trainer creates its output_dir; a refusal leaves the file system as it was.
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    output.open()  # the first side effect of ours: the trainer above has tokenized and checked the data
    return _train(trainer, output, tokenizer)
