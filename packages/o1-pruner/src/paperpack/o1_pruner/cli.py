r"""``paperpack o1-pruner``: pre-sample, train and evaluate from the command line.

Examples::

    paperpack o1-pruner presample --model ./ref --data problems.jsonl --output ./samples --grader boxed \
        --num-presamples 16 --lam 2
    paperpack o1-pruner train --model ./ref --data ./samples --output ./pruned --learning-rate 2e-6
    paperpack o1-pruner evaluate --model ./pruned --data test.jsonl --grader boxed --max-new-tokens 1024

The flags follow paperpack-core's convention (``--config FILE.yaml``, the shared ``--model``, ``--data``,
``--output``, ``--overwrite``, ``--resume``, ``--device``, ``--dtype``, ``--progress``; every
``TrainingArguments`` field of ``train`` in both spellings). ``presample`` writes a folder that
``presample --resume`` continues after an interruption; ``train`` writes the final model (and tokenizer) at
the top of ``--output`` and checkpoints as ``checkpoint-N`` beside it; ``evaluate`` prints accuracy, mean
length and, given the baseline's figures, AES (and writes them to ``--output FILE.json`` when given).

Each subcommand's flags are built when it is used (:func:`paperpack.core.subcommands.add_subcommand`), so
``paperpack o1-pruner --help`` imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from paperpack.core.errors import ConfigError

__all__ = ["configure_parser"]

GraderName = Literal["last_number", "boxed", "math_verify"]
PRESAMPLE = "o1-pruner presample"
TRAIN = "o1-pruner train"
EVALUATE = "o1-pruner evaluate"
# O1PrunerConfig's own fields that pre-sampling uses (with TrainingArguments.seed); `train` reads the weights
# these made and does not take them.
PRESAMPLE_FIELDS = (
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
    "store_ref_logps",
    "seed",
)
_SUMMARY = "o1_pruner_train.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``presample``, ``train`` and ``evaluate`` to ``paperpack o1-pruner``."""
    from paperpack.core.subcommands import add_subcommand

    commands = parser.add_subparsers(dest="o1_pruner_command", metavar="COMMAND")
    add_subcommand(
        commands,
        "presample",
        _presample_flags,
        help="sample K solutions per problem from the reference model and write the weighted training set",
        description="Stages 1-2 of O1-Pruner: K samples per problem, L_ref and A_ref, R_LH, clip and "
        "z-score. Data: JSON Lines with 'prompt' and 'answer'. --resume continues an interrupted run in "
        "--output.",
    )
    add_subcommand(
        commands,
        "train",
        _train_flags,
        help="fine-tune with the O1-Pruner loss on a presampled, weighted training set",
        description="Stage 3 of O1-Pruner: the weighted PPO-clip loss against the frozen reference (its "
        "log-probabilities stored by presample, else --ref-model, the LoRA base with the adapter disabled, "
        "or --model itself). Accepts every TrainingArguments field as a flag.",
    )
    add_subcommand(
        commands,
        "evaluate",
        _evaluate_flags,
        help="greedy accuracy and mean completion length (and AES against a baseline)",
        description="Greedy-decode one completion per problem; report accuracy, mean length in tokens and, "
        "with --baseline-accuracy and --baseline-length, AES (the formula and the paper table's variant).",
    )


def _grader_flag(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_flag

    add_flag(
        sub,
        "grader",
        GraderName,
        default="last_number",
        help="compares a completion with the answer: the last number, the last \\boxed{}, or math-verify",
    )


def _writer_flags(sub: argparse.ArgumentParser, **help: str) -> None:
    """The shared flags of ``presample`` and ``train`` (both write a folder that --resume continues)."""
    from paperpack.core.commands import (
        TRAINING_COMMAND_FLAGS,
        TRAINING_COMMAND_REQUIRED,
        add_shared_arguments,
    )

    add_shared_arguments(
        sub,
        *TRAINING_COMMAND_FLAGS,
        required=TRAINING_COMMAND_REQUIRED,
        help=help,
    )


def _presample_flags(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.commands import add_training_arguments
    from paperpack.o1_pruner.config import O1PrunerConfig

    excluded = [f.name for f in dataclasses.fields(O1PrunerConfig) if f.name not in PRESAMPLE_FIELDS]
    names = add_training_arguments(sub, O1PrunerConfig, exclude=excluded, title="pre-sampling")
    _writer_flags(
        sub,
        data="problems: JSON Lines with 'prompt' and 'answer' strings",
        resume="continue an interrupted presample run in --output (what it sampled is kept)",
    )
    _grader_flag(sub)
    sub.set_defaults(handler=_presample, config_fields=names)


def _train_flags(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_flag
    from paperpack.core.commands import add_lora_arguments, add_training_arguments
    from paperpack.o1_pruner.config import O1PrunerConfig

    names = add_training_arguments(sub, O1PrunerConfig, exclude=[f for f in PRESAMPLE_FIELDS if f != "seed"])
    _writer_flags(sub, data="a presample folder, or its train.jsonl (prompt_ids, completion_ids, weight)")
    add_flag(
        sub,
        "ref_model",
        str,
        metavar="DIR",
        help="the frozen reference when the data holds no ref_logps (default: the base of --lora-r, else "
        "a copy of --model)",
    )
    add_lora_arguments(sub)  # the reference is then the base with the adapter disabled
    sub.set_defaults(handler=_train, config_fields=names)


def _evaluate_flags(sub: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_flag
    from paperpack.core.commands import add_shared_arguments

    add_shared_arguments(
        sub,
        "model",
        "data",
        "output",
        "overwrite",
        "device",
        "dtype",
        "batch_size",
        "progress",
        "config",
        required=("model", "data"),
        help={
            "data": "problems: JSON Lines with 'prompt' and 'answer' strings",
            "output": "also write the figures to this new .json file",
            "batch_size": "problems per generate call",
        },
        defaults={"batch_size": 16},
    )
    _grader_flag(sub)
    add_flag(sub, "max_new_tokens", int, default=1024, help="the length limit of each completion")
    add_flag(sub, "chat_template", bool, default=False, help="wrap prompts in the tokenizer's chat template")
    add_flag(sub, "baseline_accuracy", float, help="the reference's accuracy, for AES")
    add_flag(sub, "baseline_length", float, help="the reference's mean length in tokens, for AES")
    sub.set_defaults(handler=_evaluate)


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

    from paperpack.core.data import ensure_pad_token
    from paperpack.core.hf import load_model_and_tokenizer

    if not args.progress:
        hf_logging.disable_progress_bar()
    model, tokenizer = load_model_and_tokenizer(path, device=args.device, dtype=args.dtype)
    ensure_pad_token(tokenizer)
    return model, tokenizer


def _presample_output(args: argparse.Namespace) -> Path:
    """Check --output, --overwrite and --resume of ``presample`` (no side effect)."""
    from paperpack.core.files import check_output, output_command

    folder = Path(args.output)
    inputs = [args.model, args.data]
    if args.resume is None:
        check_output(folder, command=PRESAMPLE, overwrite=args.overwrite, inputs=inputs)
        return folder
    if args.overwrite:
        raise ConfigError("`--resume` continues the run in --output and `--overwrite` replaces it; give one")
    if args.resume != "last":
        raise ConfigError(f"`--resume` of presample takes no folder (it continues --output): {args.resume!r}")
    check_output(folder, command=PRESAMPLE, overwrite=True, inputs=inputs)
    if output_command(folder) != PRESAMPLE:
        raise ConfigError(
            f"`--resume` continues an earlier run of `{PRESAMPLE}`, but --output {args.output!r} is not one; "
            "give the --output of that run"
        )
    return folder


def _presample(args: argparse.Namespace) -> int:
    from paperpack.core.files import remove_path, write_output_marker
    from paperpack.core.hf import command_training_args
    from paperpack.o1_pruner.config import O1PrunerConfig
    from paperpack.o1_pruner.presampling import TRAIN_FILE, check_presample_inputs, presample

    folder = _presample_output(args)
    grader = _grader(args.grader)
    problems = _problems(args.data)
    config = command_training_args(
        args, args.config_fields, cls=O1PrunerConfig, output=folder / "unused", report_to="none"
    )
    model, tokenizer = _load(args.model, args)
    check_presample_inputs(model, tokenizer, problems, grader, config)
    if args.resume is None and folder.exists() and any(folder.iterdir()):
        remove_path(folder)  # an earlier output of ours and nothing else: check_output made sure
    folder.mkdir(parents=True, exist_ok=True)
    write_output_marker(folder, command=PRESAMPLE)
    data = presample(model, tokenizer, problems, grader, config, output=folder, progress=args.progress)
    correct = sum(data["correct"]) / data.num_rows
    print(
        f"wrote {folder / TRAIN_FILE}: {data.num_rows} training samples from {len(problems)} problems "
        f"(K={config.num_presamples}); kept samples {correct:.1%} correct"
    )
    return 0


def _train_records(path: Path) -> list[dict[str, Any]]:
    from paperpack.core.data import read_jsonl
    from paperpack.o1_pruner.presampling import TRAIN_FILE

    file = path / TRAIN_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--data {str(path)!r} is neither a presample folder with {TRAIN_FILE} nor a file")
    columns = ("prompt_ids", "completion_ids", "weight")
    records = read_jsonl(file, required=())
    for number, record in enumerate(records, start=1):
        missing = [key for key in columns if key not in record]
        if missing:
            raise ConfigError(f"{file}:{number} lacks {', '.join(missing)} (write it with `presample`)")
    stored = ["ref_logps" in record for record in records]
    if any(stored) and not all(stored):
        raise ConfigError(f"{file}: line {stored.index(False) + 1} lacks the ref_logps other lines have")
    keep = (*columns, "ref_logps") if all(stored) else columns
    return [{key: record[key] for key in keep} for record in records]


def _train(args: argparse.Namespace) -> int:
    from paperpack.core.commands import check_training_output
    from paperpack.core.hf import (
        ArgumentsAsJson,
        command_training_args,
        lora_config,
        save_trained_model,
        wrap_lora,
    )
    from paperpack.core.validation import check_finite
    from paperpack.o1_pruner.config import O1PrunerConfig
    from paperpack.o1_pruner.trainer import O1PrunerTrainer

    lora = lora_config(args)
    inputs = [args.model, args.data] + ([args.ref_model] if args.ref_model else [])
    output = check_training_output(
        args.output, command=TRAIN, overwrite=args.overwrite, resume=args.resume, inputs=inputs
    )
    config = command_training_args(args, args.config_fields, cls=O1PrunerConfig, output=args.output)
    records = _train_records(Path(args.data))
    model, tokenizer = _load(args.model, args)
    ref_model = _load(args.ref_model, args)[0] if args.ref_model else None
    if lora is not None:
        model = wrap_lora(model, lora)
    trainer = O1PrunerTrainer(
        model=model,
        args=config,
        ref_model=ref_model,
        train_dataset=records,
        processing_class=tokenizer,
        callbacks=[ArgumentsAsJson()],
    )
    output.open()
    result = trainer.train(resume_from_checkpoint=str(output.resume_from) if output.resume_from else None)
    check_finite("the trained weights", model.state_dict(), hint="lower `learning_rate`")
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    summary = {"steps": result.global_step, "train_loss": result.training_loss, "samples": len(records)}
    (output.folder / _SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {output.folder}: {result.global_step} steps on {len(records)} samples, "
        f"train loss {result.training_loss:.4f}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from paperpack.core.files import OUTPUT_KEY, atomic_write_text, check_output
    from paperpack.core.validation import check_int, check_number
    from paperpack.o1_pruner.evaluation import evaluate
    from paperpack.o1_pruner.metrics import aes

    if (args.baseline_accuracy is None) != (args.baseline_length is None):
        raise ConfigError("`baseline_accuracy` and `baseline_length` go together (AES needs both)")
    for name in ("baseline_accuracy", "baseline_length"):
        if getattr(args, name) is not None:
            check_number(name, getattr(args, name), greater_than=0)
    check_int("max_new_tokens", args.max_new_tokens, minimum=1)
    if args.output is not None:
        check_output(
            args.output, command=EVALUATE, overwrite=args.overwrite, inputs=[args.model, args.data], file=True
        )
    grader = _grader(args.grader)
    problems = _problems(args.data)
    model, tokenizer = _load(args.model, args)
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
    figures: dict[str, Any] = {
        OUTPUT_KEY: EVALUATE,
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
