"""``paperpack meap pretrain`` and ``paperpack meap sft``: MEAP training of a model folder on a jsonl file.

Thin wrappers over ``transformers.Trainer`` + :class:`MEAPCollator` and ``trl.SFTTrainer`` +
:class:`MEAPSFTCollator`, for users who do not write Python. Heavy libraries are imported in the handlers so
that ``paperpack --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from paperpack.core.errors import ConfigError
from paperpack.meap.config import SFT_LAYOUTS, MEAPConfig

__all__ = ["configure_parser"]

logger = logging.getLogger(__name__)


def _add_common(parser: argparse.ArgumentParser, *, max_length: int) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder to start from (config, safetensors, tokenizer)"
    )
    parser.add_argument("--data", required=True, help="training data, a JSON Lines file")
    parser.add_argument("--output", required=True, help="new folder for the trained model and tokenizer")
    parser.add_argument("--mask-token", default="[MASK]", help="mask token string (default: %(default)s)")
    parser.add_argument(
        "--no-add-mask-token",
        dest="add_mask_token",
        action="store_false",
        help="do not add the mask token or resize the embeddings; the tokenizer must already have it",
    )
    parser.add_argument(
        "--shared-positions",
        action="store_true",
        help="one mask pattern shared by all rows of a batch (official-code parity) instead of fresh per row",
    )
    parser.add_argument(
        "--max-length", type=int, default=max_length, help="tokens per sequence (%(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per device step (%(default)s)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (%(default)s)")
    parser.add_argument("--learning-rate", type=float, default=4e-4, help="peak learning rate (%(default)s)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the data (%(default)s)")
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (-1: use --epochs)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the masks and the data order (%(default)s)"
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``pretrain`` and ``sft`` subcommands to ``paperpack meap``."""
    parser.description = "MEAP: mask a fraction of input tokens and train with the plain next-token loss."
    commands = parser.add_subparsers(dest="meap_command", metavar="{pretrain,sft}")
    pretrain = commands.add_parser(
        "pretrain",
        help="causal-LM training with MEAP on a jsonl file of {'text': ...} records",
        description="Tokenize the 'text' field, join the records with EOS, cut blocks of --max-length tokens "
        "and train with transformers.Trainer and MEAPCollator.",
    )
    _add_common(pretrain, max_length=1024)
    pretrain.add_argument("--mask-ratio", type=float, default=0.15, help="mask ratio P (paper: %(default)s)")
    pretrain.add_argument(
        "--text-field", default="text", help="the jsonl field holding the text (%(default)s)"
    )
    pretrain.set_defaults(handler=_pretrain)

    sft = commands.add_parser(
        "sft",
        help="supervised fine-tuning with MEAP on a jsonl file of prompt/completion or messages records",
        description="Train with trl.SFTTrainer and MEAPSFTCollator: records are {'prompt', 'completion'} "
        "(loss on the completion) or {'messages': [...]} (loss on the assistant turns; the tokenizer needs a "
        "chat template with generation markers).",
    )
    _add_common(sft, max_length=1024)
    sft.add_argument(
        "--sft-mask-ratio", type=float, default=0.1, help="answer mask ratio (official: %(default)s)"
    )
    sft.add_argument(
        "--min-answer-tokens",
        type=int,
        default=51,
        help="answers shorter than this stay unmasked (%(default)s)",
    )
    sft.add_argument(
        "--layout", choices=SFT_LAYOUTS, default="separate", help="masked-copy layout (%(default)s)"
    )
    sft.set_defaults(handler=_sft)
    parser.set_defaults(handler=lambda _args: parser.print_help())


def _config(args: argparse.Namespace, **fields: Any) -> MEAPConfig:
    return MEAPConfig(
        mask_token=args.mask_token, per_row_positions=not args.shared_positions, seed=args.seed, **fields
    )


def _prepare(args: argparse.Namespace, config: MEAPConfig) -> tuple[Any, Any, Path]:
    """Check the paths, load the model and make sure it has the mask token."""
    from paperpack.core.checkpoints import check_output_path
    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.meap.tokens import add_mask_token, mask_token_id

    output = Path(args.output)
    check_output_path(output, [args.model, args.data])
    if output.exists():  # checked again when writing; failing here saves loading the model
        raise FileExistsError(f"--output {str(output)!r} already exists; choose a new folder")
    for name in ("max_length", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(args, name)}")
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")
    if args.add_mask_token:
        add_mask_token(tokenizer, model, config.mask_token)
    else:
        mask_token_id(tokenizer, config.mask_token)
    return model, tokenizer, output


def _run(args: argparse.Namespace, build: Any) -> int:
    from paperpack.core.files import atomic_folder, remove_path

    output = Path(args.output)
    # The Trainer writes into a hidden sibling that becomes --output only once training has finished.
    with atomic_folder(output) as staging:
        trainer, tokenizer = build(staging / "trainer")
        trainer.train()
        remove_path(staging / "trainer")
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(str(staging))
    logger.info("saved the trained model to %s", output)
    print(f"saved {output}")
    return 0


def _training_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.epochs,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "save_strategy": "no",
        "logging_steps": 10,
    }


def _pretrain(args: argparse.Namespace) -> int:
    from datasets import Dataset
    from transformers import Trainer

    from paperpack.core.data import read_jsonl
    from paperpack.core.hf import training_args
    from paperpack.meap.callback import MEAPEpochCallback
    from paperpack.meap.collator import MEAPCollator

    config = _config(args, mask_ratio=args.mask_ratio)
    records = read_jsonl(args.data, required=(args.text_field,))
    model, tokenizer, _ = _prepare(args, config)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token to separate the records with")
    stream: list[int] = []
    for record in records:
        stream += tokenizer(record[args.text_field], add_special_tokens=True)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + args.max_length] for i in range(0, len(stream), args.max_length)]
    blocks = [block for block in blocks if len(block) > 1]
    logger.info("%d records -> %d blocks of up to %d tokens", len(records), len(blocks), args.max_length)

    def build(trainer_dir: Path) -> tuple[Any, Any]:
        arguments = training_args(trainer_dir, **_training_kwargs(args))
        collator = MEAPCollator(tokenizer, config)
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict({"input_ids": blocks}),
            data_collator=collator,
            callbacks=[MEAPEpochCallback(collator)],
        )
        return trainer, tokenizer

    return _run(args, build)


def _sft_records(path: str) -> tuple[list[dict[str, Any]], bool]:
    from paperpack.core.data import read_jsonl

    records = read_jsonl(path, required=())
    conversational = "messages" in records[0]
    for number, record in enumerate(records, start=1):
        if conversational and not isinstance(record.get("messages"), list):
            raise ConfigError(
                f"{path}: record {number} needs a 'messages' list like record 1; it has {sorted(record)}"
            )
        if not conversational and not all(
            isinstance(record.get(key), str) for key in ("prompt", "completion")
        ):
            raise ConfigError(
                f"{path}: record {number} needs string fields 'prompt' and 'completion' (or a 'messages' "
                "list); "
                f"it has {sorted(record)}"
            )
    keep = ("messages",) if conversational else ("prompt", "completion")
    return [{key: record[key] for key in keep} for record in records], conversational


def _sft(args: argparse.Namespace) -> int:
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    from paperpack.core.hf import training_args
    from paperpack.meap.callback import MEAPEpochCallback
    from paperpack.meap.collator import MEAPSFTCollator

    config = _config(
        args,
        sft_mask_ratio=args.sft_mask_ratio,
        min_answer_tokens=args.min_answer_tokens,
        sft_layout=args.layout,
    )
    records, conversational = _sft_records(args.data)
    model, tokenizer, _ = _prepare(args, config)

    def build(trainer_dir: Path) -> tuple[Any, Any]:
        arguments = training_args(
            trainer_dir,
            cls=SFTConfig,
            max_length=args.max_length,
            assistant_only_loss=conversational,
            completion_only_loss=None if conversational else True,
            **_training_kwargs(args),
        )
        collator = MEAPSFTCollator(tokenizer, config)
        trainer = SFTTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            data_collator=collator,
            callbacks=[MEAPEpochCallback(collator)],
        )
        return trainer, tokenizer

    return _run(args, build)
