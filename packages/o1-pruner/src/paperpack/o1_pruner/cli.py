r"""``paperpack o1-pruner``: pre-sample, train and evaluate from the command line.

Example::

    paperpack o1-pruner presample --model ./ref --data problems.jsonl --output ./samples --grader boxed \
        --num-presamples 16 --lam 2
    paperpack o1-pruner train --model ./ref --data ./samples --output ./pruned --learning-rate 2e-6
    paperpack o1-pruner evaluate --model ./pruned --data test.jsonl --grader boxed --max-new-tokens 1024

``presample`` writes a resumable folder (rerun the same command to continue an interrupted run); ``train``
writes the final model (and tokenizer) at the top of ``--output`` and checkpoints as ``checkpoint-N`` beside
it; ``evaluate`` prints accuracy, mean length and, given the baseline's figures, AES.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = ["configure_parser"]

GRADER_NAMES = ("last_number", "boxed", "math_verify")
# O1PrunerConfig's own fields: every subcommand that uses the settings gets these flags.
_PRESAMPLE_FIELDS = (
    "num_presamples",
    "samples_per_problem",
    "lam",
    "weight_clip",
    "normalize_weights",
    "presample_temperature",
    "presample_top_p",
    "presample_max_new_tokens",
    "presample_batch_size",
    "chat_template",
    "seed",
)
# TrainingArguments fields typed as strings or enums that the generated flags do not cover.
_STRING_FIELDS = ("lr_scheduler_type", "optim", "save_strategy", "logging_strategy", "eval_strategy")
_SUMMARY = "o1_pruner_train.json"


class _LazyParser(argparse.ArgumentParser):
    """A subcommand parser that adds its config-generated flags only when it parses (or prints help).

    The flags come from ``O1PrunerConfig``, a ``TrainingArguments``: building them imports transformers, which
    ``paperpack o1-pruner --help`` must not pay for.
    """

    def __init__(self, *args: Any, configure: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._configure = configure

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Add the deferred flags, then parse."""
        if self._configure is not None:
            configure, self._configure = self._configure, None
            configure(self)
        return super().parse_known_args(args, namespace)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``presample``, ``train`` and ``evaluate`` to ``paperpack o1-pruner``."""
    commands = parser.add_subparsers(
        dest="o1_pruner_command", metavar="COMMAND", required=True, parser_class=_LazyParser
    )
    _presample_parser(commands)
    _train_parser(commands)
    _evaluate_parser(commands)


def _common(sub: argparse.ArgumentParser, *, data_help: str) -> None:
    sub.add_argument("--model", required=True, metavar="DIR", help="a local causal-LM folder (safetensors)")
    sub.add_argument("--data", required=True, metavar="FILE", help=data_help)
    sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    sub.add_argument("--dtype", default="auto", help="float32, bf16, fp16 or auto (default: %(default)s)")
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress bars (default: on)",
    )


def _presample_flags(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_config_arguments
    from paperpack.o1_pruner.config import O1PrunerConfig

    excluded = [f.name for f in dataclasses.fields(O1PrunerConfig) if f.name not in _PRESAMPLE_FIELDS]
    fields = add_config_arguments(sub, O1PrunerConfig, exclude=excluded)
    sub.set_defaults(handler=_presample, config_fields=fields)


def _presample_parser(commands: Any) -> None:
    sub = commands.add_parser(
        "presample",
        configure=_presample_flags,
        help="sample K solutions per problem from the reference model and write the weighted training set",
        description="Stage 1-2 of O1-Pruner: K samples per problem, L_ref and A_ref, R_LH, clip and z-score. "
        "Data: JSON Lines with 'prompt' and 'answer'. Rerun the same command to resume an interrupted run.",
    )
    _common(sub, data_help="problems: JSON Lines with 'prompt' and 'answer' strings")
    sub.add_argument(
        "--output", required=True, metavar="DIR", help="new folder (or an earlier presample run)"
    )
    sub.add_argument("--grader", default="last_number", choices=GRADER_NAMES, help="default: %(default)s")


def _train_flags(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_config_arguments, supported_fields
    from paperpack.o1_pruner.config import O1PrunerConfig

    supported = set(supported_fields(O1PrunerConfig)) - {"output_dir"}
    excluded = [f.name for f in dataclasses.fields(O1PrunerConfig) if f.init and f.name not in supported]
    fields = add_config_arguments(sub, O1PrunerConfig, exclude=excluded)
    extra = [name for name in _STRING_FIELDS if name not in supported]
    for name in extra:
        sub.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, help=f"TrainingArguments.{name}"
        )
    sub.set_defaults(handler=_train, config_fields=[*fields, *extra])


def _train_parser(commands: Any) -> None:
    sub = commands.add_parser(
        "train",
        configure=_train_flags,
        help="fine-tune with the O1-Pruner loss on a presampled, weighted training set",
        description="Stage 3 of O1-Pruner: the weighted PPO-clip loss against the frozen reference (--model "
        "itself, or --ref-model). Accepts every TrainingArguments field as a flag.",
    )
    _common(sub, data_help="a presample folder, or its train.jsonl (prompt_ids, completion_ids, weight)")
    sub.add_argument(
        "--output", required=True, metavar="DIR", help="new folder for the model and checkpoints"
    )
    sub.add_argument("--overwrite", action="store_true", help="write into an earlier output of this command")
    sub.add_argument("--ref-model", default=None, metavar="DIR", help="the reference (default: --model)")
    sub.add_argument(
        "--lora-r",
        type=int,
        default=None,
        metavar="R",
        help="train a LoRA adapter of rank R; the reference is the base, adapter disabled",
    )
    sub.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=None,
        metavar="NAME",
        help="modules the adapter wraps (default: PEFT's choice)",
    )
    sub.add_argument(
        "--resume", default=None, metavar="last|DIR", help="continue from a checkpoint of --output"
    )


def _evaluate_parser(commands: Any) -> None:
    sub = commands.add_parser(
        "evaluate",
        help="greedy accuracy and mean completion length (and AES against a baseline)",
        description="Greedy-decode one completion per problem; report accuracy, mean length in tokens and, "
        "with --baseline-accuracy and --baseline-length, AES (formula and the paper table's variant).",
    )
    _common(sub, data_help="problems: JSON Lines with 'prompt' and 'answer' strings")
    sub.add_argument("--grader", default="last_number", choices=GRADER_NAMES, help="default: %(default)s")
    sub.add_argument("--max-new-tokens", type=int, default=1024, help="default: %(default)s")
    sub.add_argument("--batch-size", type=int, default=16, help="problems per generate call (default: 16)")
    sub.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wrap prompts with the tokenizer's chat template (default: off)",
    )
    sub.add_argument(
        "--baseline-accuracy", type=float, default=None, help="the reference's accuracy, for AES"
    )
    sub.add_argument(
        "--baseline-length", type=float, default=None, help="the reference's mean length, for AES"
    )
    sub.add_argument("--output", default=None, metavar="FILE.json", help="also write the figures here")
    sub.set_defaults(handler=_evaluate)


def _flags(error: Exception) -> str:
    """The message with `field_name` written as the user types it: --field-name."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m.group(1).replace("_", "-"), str(error))


def _config(args: argparse.Namespace, output_dir: Path, **extra: Any) -> Any:
    from paperpack.core.arguments import config_overrides
    from paperpack.core.hf import machine_defaults
    from paperpack.o1_pruner.config import O1PrunerConfig

    settings = {**machine_defaults(), **extra, **config_overrides(args, args.config_fields)}
    if args.device == "cpu":
        settings.update(use_cpu=True, bf16=False)
    try:
        return O1PrunerConfig(output_dir=str(output_dir), **settings)
    except ConfigError as error:
        raise ConfigError(_flags(error)) from None


def _grader(name: str) -> Any:
    from paperpack.o1_pruner.graders import GRADERS

    if name == "math_verify":
        try:
            import math_verify  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--grader math_verify needs math-verify: pip install 'paperpack-o1-pruner[math-verify]'"
            ) from None
    return GRADERS[name]


def _problems(path: str) -> list[dict[str, Any]]:
    from paperpack.core.data import read_jsonl

    return read_jsonl(path, required=("prompt", "answer"))


def _load(path: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from transformers.utils import logging as hf_logging

    from paperpack.core.hf import load_model_and_tokenizer

    if not args.progress:
        hf_logging.disable_progress_bar()
    model, tokenizer = load_model_and_tokenizer(path, device=args.device, dtype=args.dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _presample(args: argparse.Namespace) -> int:
    from paperpack.o1_pruner.presampling import TRAIN_FILE, presample

    output = Path(args.output)
    if (
        output.resolve() == Path(args.model).resolve()
        or Path(args.model).resolve() in output.resolve().parents
    ):
        raise ConfigError(f"--output {args.output!r} must not be inside --model {args.model!r}")
    grader = _grader(args.grader)
    problems = _problems(args.data)
    config = _config(args, output / ".unused", report_to="none")
    model, tokenizer = _load(args.model, args)
    try:
        data = presample(model, tokenizer, problems, grader, config, output=output, progress=args.progress)
    except ConfigError as error:
        raise ConfigError(_flags(error)) from None
    correct = sum(data["correct"]) / data.num_rows
    print(
        f"wrote {output / TRAIN_FILE}: {data.num_rows} training samples from {len(problems)} problems "
        f"(K={config.num_presamples}); kept samples {correct:.1%} correct"
    )
    return 0


def _train_records(path: Path) -> list[dict[str, Any]]:
    from paperpack.o1_pruner.presampling import TRAIN_FILE

    file = path / TRAIN_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--data {str(path)!r} is neither a presample folder with {TRAIN_FILE} nor a file")
    from paperpack.core.data import read_jsonl

    records = read_jsonl(file, required=())
    for number, record in enumerate(records, start=1):
        missing = [k for k in ("prompt_ids", "completion_ids", "weight") if k not in record]
        if missing:
            raise ConfigError(f"{file}:{number} lacks {', '.join(missing)} (write it with `presample`)")
    return [{k: r[k] for k in ("prompt_ids", "completion_ids", "weight")} for r in records]


def _check_train_output(args: argparse.Namespace) -> tuple[Path, str | None]:
    output = Path(args.output)
    inputs = [Path(args.model), Path(args.data)] + ([Path(args.ref_model)] if args.ref_model else [])
    for item in inputs:
        if output.resolve() == item.resolve() or output.resolve() in item.resolve().parents:
            raise ConfigError(f"--output {args.output!r} must not hold an input ({str(item)!r})")
    ours = (output / _SUMMARY).is_file() or any(output.glob("checkpoint-*"))
    if output.exists() and any(output.iterdir()) and args.resume is None and not (args.overwrite and ours):
        hint = " (it is not an earlier output of `o1-pruner train`)" if args.overwrite else ""
        raise ConfigError(
            f"--output {args.output!r} exists and is not empty{hint}; choose a new folder, pass --resume, or "
            "--overwrite an earlier output of this command"
        )
    if args.resume is None:
        return output, None
    if args.resume != "last":
        if not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume!r} is not a checkpoint folder")
        return output, str(args.resume)
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if last is None:
        raise ConfigError(f"--resume last found no checkpoint-<step> folder in {args.output!r}")
    return output, str(last)


def _train(args: argparse.Namespace) -> int:
    if args.lora_r is not None and args.lora_r < 1:
        raise ConfigError(f"--lora-r must be >= 1, got {args.lora_r}")
    output, resume = _check_train_output(args)
    records = _train_records(Path(args.data))
    config = _config(args, output)
    model, tokenizer = _load(args.model, args)
    ref_model = _load(args.ref_model, args)[0] if args.ref_model else None
    if args.lora_r is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=args.lora_target_modules)
        model = get_peft_model(model, lora)
    from paperpack.o1_pruner.trainer import O1PrunerTrainer

    try:
        trainer = O1PrunerTrainer(
            model=model, args=config, ref_model=ref_model, train_dataset=records, processing_class=tokenizer
        )
    except ConfigError as error:
        raise ConfigError(_flags(error)) from None
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output))
    (output / "training_args.bin").unlink(missing_ok=True)  # arguments are kept as JSON, never pickled
    (output / "training_args.json").write_text(config.to_json_string())
    summary = {"steps": result.global_step, "train_loss": result.training_loss, "samples": len(records)}
    (output / _SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {output}: {result.global_step} steps on {len(records)} samples, "
        f"train loss {result.training_loss:.4f}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from paperpack.core.files import atomic_write_text
    from paperpack.o1_pruner.evaluation import evaluate
    from paperpack.o1_pruner.metrics import aes

    if (args.baseline_accuracy is None) != (args.baseline_length is None):
        raise ConfigError("--baseline-accuracy and --baseline-length go together (AES needs both)")
    for flag, value in (
        ("--baseline-accuracy", args.baseline_accuracy),
        ("--baseline-length", args.baseline_length),
    ):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be > 0 (AES divides by it), got {value}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output is not None and Path(args.output).exists():
        raise ConfigError(f"--output {args.output!r} exists; choose a new file")
    grader = _grader(args.grader)
    problems = _problems(args.data)
    model, tokenizer = _load(args.model, args)
    try:
        result = evaluate(
            model,
            tokenizer,
            problems,
            grader,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            chat_template=args.chat_template,
            progress=args.progress,
        )
    except ConfigError as error:
        raise ConfigError(_flags(error)) from None
    figures: dict[str, Any] = {
        "problems": len(problems),
        "accuracy": result.accuracy,
        "mean_length": result.mean_length,
    }
    line = (
        f"accuracy {result.accuracy:.4f}, mean length {result.mean_length:.1f} tokens, "
        f"{len(problems)} problems"
    )
    if args.baseline_accuracy is not None:
        base = (args.baseline_accuracy, args.baseline_length)
        figures["aes"] = aes(result.accuracy, result.mean_length, *base)
        figures["aes_sign_agnostic"] = aes(result.accuracy, result.mean_length, *base, sign_agnostic=True)
        line += f", AES {figures['aes']:.3f} (table variant {figures['aes_sign_agnostic']:.3f})"
    print(line)
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(figures, indent=2) + "\n")
    return 0
