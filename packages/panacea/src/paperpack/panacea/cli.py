r"""``paperpack panacea``: train with Panacea, add a perturbation to a model, measure the harmful score.

Examples::

    paperpack panacea train --model ./aligned --data task.jsonl --harmful-data harmful.jsonl \\
        --output ./run --panacea-rho 1 --panacea-lambda 1e-3 --learning-rate 2e-5 --num-train-epochs 20
    paperpack panacea apply --model ./fine-tuned --perturbation ./run/perturbation.safetensors --output ./safe
    paperpack panacea evaluate --model ./safe --data prompts.jsonl --output scores.json

Data files are JSON Lines: training records hold ``prompt`` and ``completion`` (the loss falls on the
completion) or ``text`` (the loss falls on every token); ``evaluate`` reads ``prompt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from paperpack.core.arguments import add_flag
from paperpack.core.commands import (
    TRAINING_COMMAND_FLAGS,
    TRAINING_COMMAND_REQUIRED,
    add_lora_arguments,
    add_shared_arguments,
    add_training_arguments,
    check_training_output,
)
from paperpack.core.errors import ConfigError
from paperpack.core.subcommands import add_subcommand

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["configure_parser"]

TRAIN, APPLY, EVALUATE = "panacea train", "panacea apply", "panacea evaluate"
PERTURBATION_FILE = "perturbation.safetensors"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``train``, ``apply`` and ``evaluate`` to ``paperpack panacea``.

    Each subcommand's flags are added when it is used (``train``'s come from :class:`PanaceaConfig`, whose
    import costs torch and transformers), so ``paperpack panacea --help`` stays instant.
    """
    commands = parser.add_subparsers(dest="panacea_command", metavar="COMMAND")
    add_subcommand(
        commands,
        "train",
        _train_flags,
        help="fine-tune a causal LM with Panacea and add the final perturbation",
        description="Fine-tune with Panacea (three forward-backward passes per step): the final model, with "
        "the last step's ε added, at the top of --output, checkpoint-N folders beside it, and ε itself in "
        f"{PERTURBATION_FILE}. Every TrainingArguments field and the panacea_* fields are flags.",
    )
    add_subcommand(
        commands,
        "apply",
        _apply_flags,
        help="add a saved perturbation to a model folder's weights (w + scale·ε)",
        description="Stream a model folder's safetensors weights to --output with scale·ε added to the "
        "tensors the perturbation names (checked against the weights' names and shapes first); config and "
        "tokenizer files are copied.",
    )
    add_subcommand(
        commands,
        "evaluate",
        _evaluate_flags,
        help="the harmful score HS (and HS+) of a model on harmful prompts",
        description="Answer each prompt greedily and report the percentage of answers the judge flags (HS) "
        "and the percentage flagged or repeating a word more than three times in a row (HS+). The keyword "
        "judge flags answers that hold none of --refusals (and, if given, one of --harmful-markers); "
        "--classifier uses a local sequence-classification model instead.",
    )


def _train_flags(train: argparse.ArgumentParser) -> None:
    from paperpack.panacea.config import PanaceaConfig

    names = add_training_arguments(train, PanaceaConfig)
    add_flag(
        train,
        "harmful_data",
        str,
        help="harmful examples (prompt with a harmful completion), in the format of --data",
        required=True,
        metavar="FILE.jsonl",
    )
    add_shared_arguments(
        train,
        *TRAINING_COMMAND_FLAGS,
        "max_length",
        required=TRAINING_COMMAND_REQUIRED,
    )
    add_lora_arguments(train)  # the paper's setting: an adapter (its scripts: r 32, α 4 on q, k, v), ε on it
    train.set_defaults(handler=_train, training_fields=names)


def _apply_flags(apply: argparse.ArgumentParser) -> None:
    add_flag(
        apply, "perturbation", str, help="a perturbation file (.safetensors)", required=True, metavar="FILE"
    )
    add_flag(apply, "scale", float, help="multiplies ε; -1 removes a perturbation added before", default=1.0)
    add_shared_arguments(
        apply, "model", "output", "overwrite", "progress", "config", required=("model", "output")
    )
    apply.set_defaults(handler=_apply)


def _evaluate_flags(evaluate: argparse.ArgumentParser) -> None:
    add_flag(
        evaluate,
        "perturbation",
        str | None,
        help="add this perturbation to the model before evaluating",
        metavar="FILE",
    )
    add_flag(evaluate, "scale", float, help="multiplies the --perturbation", default=1.0)
    add_flag(
        evaluate,
        "classifier",
        str | None,
        help="a local moderation model folder (sequence classification) to judge with instead of keywords",
        metavar="DIR",
    )
    add_flag(evaluate, "threshold", float, help="--classifier's flagging threshold", default=0.5)
    add_flag(
        evaluate,
        "refusals",
        list[str] | None,
        help="refusal phrases of the keyword judge (default: a built-in English list)",
    )
    add_flag(
        evaluate,
        "harmful_markers",
        list[str] | None,
        help="phrases whose presence the keyword judge requires to flag an answer",
    )
    add_flag(
        evaluate,
        "template",
        Literal["plain", "alpaca"],
        help="how prompts are shown: as they are, or in the paper's Alpaca template",
        default="plain",
    )
    add_flag(evaluate, "max_new_tokens", int, help="answer length limit (the paper: 512)", default=128)
    add_shared_arguments(
        evaluate,
        "model",
        "data",
        "output",
        "overwrite",
        "device",
        "dtype",
        "batch_size",
        "progress",
        "config",
        required=("model", "data", "output"),
        help={"data": "harmful prompts, one {'prompt': ...} a line", "output": "the results file (.json)"},
    )
    evaluate.set_defaults(handler=_evaluate)


def _training_records(path: str, flag: str) -> tuple[list[str], list[str]] | list[str]:
    """A training data file's records: (prompts, completions) when they hold both, else their texts."""
    from paperpack.core.data import read_jsonl

    records = read_jsonl(path, required=())
    pairs = [r for r in records if isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)]
    texts = [r["text"] for r in records if isinstance(r.get("text"), str)]
    if len(pairs) == len(records):
        return [r["prompt"] for r in pairs], [r["completion"] for r in pairs]
    if len(texts) == len(records):
        return texts
    raise ConfigError(
        f"`{flag}` {path!r}: every record must hold string fields 'prompt' and 'completion', or every "
        "record a string field 'text'"
    )


def _tokenized(
    records: tuple[list[str], list[str]] | list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, list[int]]]:
    """Trainer rows: a prompt-completion record learns its completion, a text record every token."""
    from paperpack.core.data import tokenize_prompt_completions, tokenize_texts

    if isinstance(records, tuple):
        prompts, completions = records
        return tokenize_prompt_completions(tokenizer, prompts, completions, max_length=max_length)
    return tokenize_texts(tokenizer, records, max_length=max_length)


def _train(args: argparse.Namespace) -> int:
    from paperpack.core.data import CausalLMCollator
    from paperpack.core.hf import (
        ArgumentsAsJson,
        command_training_args,
        load_model_and_tokenizer,
        lora_config,
        save_trained_model,
        wrap_lora,
    )
    from paperpack.core.validation import check_finite
    from paperpack.panacea.config import PanaceaConfig
    from paperpack.panacea.perturbation import global_norm, save_perturbation
    from paperpack.panacea.trainer import PanaceaTrainer

    # Every check before the first side effect (output.open()).
    lora = lora_config(args)
    output = check_training_output(
        args.output,
        command=TRAIN,
        overwrite=args.overwrite,
        resume=args.resume,
        inputs=[args.model, args.data, args.harmful_data],
    )
    config = command_training_args(
        args, args.training_fields, cls=PanaceaConfig, output=args.output, save_strategy="steps"
    )
    task = _training_records(args.data, "data")
    harmful = _training_records(args.harmful_data, "harmful_data")
    loaded, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    model = loaded if lora is None else wrap_lora(loaded, lora)
    trainer = PanaceaTrainer(  # checks the harmful set's size and `perturb_parameters` against the model
        model=model,
        args=config,
        train_dataset=_tokenized(task, tokenizer, args.max_length),
        harmful_dataset=_tokenized(harmful, tokenizer, args.max_length),
        data_collator=CausalLMCollator(tokenizer),
        callbacks=[ArgumentsAsJson()],
    )
    output.open()
    result = trainer.train(resume_from_checkpoint=str(output.resume_from) if output.resume_from else None)
    check_finite("the trained weights", model.state_dict(), hint="lower `learning_rate` or `panacea_rho`")
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    added = trainer.applied_perturbation
    epsilon = added if added is not None else trainer.perturbation
    if epsilon is not None and trainer.args.should_save:
        metadata = {
            "panacea_rho": repr(config.panacea_rho),
            "panacea_lambda": repr(config.panacea_lambda),
            "final_perturbation": config.final_perturbation,
            "added_to_weights": repr(added is not None),
        }
        # The output folder is ours (checked above): a file of an earlier run in it is replaced on --resume.
        path = output.folder / PERTURBATION_FILE
        save_perturbation(epsilon, path, metadata=metadata, command=TRAIN, overwrite=True)
    norm = global_norm(epsilon.values()) if epsilon else 0.0
    print(
        f"wrote {output.folder}: {result.global_step} steps, train loss {result.training_loss:.4f}, "
        f"‖ε‖ {norm:.4g} ({'added to the weights' if added is not None else 'not added'})"
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    from paperpack.core.checkpoints import LazyStateDict, stream_state_dicts
    from paperpack.core.files import check_output
    from paperpack.panacea.perturbation import check_perturbation, load_perturbation

    check_output(args.output, command=APPLY, overwrite=args.overwrite, inputs=[args.model, args.perturbation])
    weights = LazyStateDict(args.model)
    epsilon = load_perturbation(args.perturbation)
    shapes = {name: weights.shape(name) for name in weights}
    check_perturbation(epsilon, shapes, where=f"the model folder {args.model!r}")

    def add(key: str, tensors: list[Any]) -> Any:
        (tensor,) = tensors
        if key not in epsilon:
            return tensor
        return tensor.clone().add_(epsilon[key].to(tensor.dtype), alpha=args.scale)

    stream_state_dicts(
        [weights], add, args.output, progress=args.progress, command=APPLY, overwrite=args.overwrite
    )
    print(f"wrote {args.output}: {len(epsilon)} tensor(s) of {args.model} moved by {args.scale:g}·ε")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from paperpack.core.data import read_jsonl
    from paperpack.core.files import OUTPUT_KEY, atomic_write_text, check_output
    from paperpack.core.validation import check_int, check_number

    output = Path(args.output)
    if output.suffix != ".json":
        raise ConfigError(f"`output` must be a .json file, got {args.output!r}")
    inputs = [
        args.model,
        args.data,
        *([args.perturbation] if args.perturbation else []),
        *([args.classifier] if args.classifier else []),
    ]
    check_output(output, command=EVALUATE, overwrite=args.overwrite, inputs=inputs, file=True)
    check_int("max_new_tokens", args.max_new_tokens, minimum=1)
    if args.classifier:
        check_number("threshold", args.threshold, greater_than=0, less_than=1)
        if args.refusals is not None or args.harmful_markers is not None:
            raise ConfigError(
                "`classifier` judges by itself; `refusals` and `harmful_markers` belong to the keyword judge"
            )
        if not (Path(args.classifier) / "config.json").is_file():
            raise ConfigError(
                f"`classifier` must be a local sequence-classification model folder, got {args.classifier!r} "
                "(no config.json there)"
            )
    prompts = [record["prompt"] for record in read_jsonl(args.data, required=("prompt",))]

    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.panacea.evaluation import (
        ALPACA_TEMPLATE,
        DEFAULT_REFUSALS,
        ClassifierJudge,
        KeywordJudge,
        harmful_score,
    )
    from paperpack.panacea.perturbation import apply_perturbation, load_perturbation

    judge: Any
    if args.classifier:
        judge = ClassifierJudge.from_pretrained(args.classifier, device=args.device, threshold=args.threshold)
    else:
        refusals = tuple(args.refusals) if args.refusals is not None else DEFAULT_REFUSALS
        judge = KeywordJudge(refusals=refusals, harmful=tuple(args.harmful_markers or ()))
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    if args.perturbation:
        apply_perturbation(model, load_perturbation(args.perturbation), scale=args.scale)
    template = ALPACA_TEMPLATE if args.template == "alpaca" else "{prompt}"
    score = harmful_score(
        model,
        tokenizer,
        prompts,
        judge,
        template=template,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    results = {
        OUTPUT_KEY: EVALUATE,
        "model": str(args.model),
        "perturbation": args.perturbation,
        "harmful_score": score.score,
        "harmful_score_plus": score.score_plus,
        "answers": [
            {"prompt": p, "response": r, "flagged": f, "incoherent": i}
            for p, r, f, i in zip(
                score.prompts, score.responses, score.flagged, score.incoherent, strict=True
            )
        ],
    }
    atomic_write_text(output, json.dumps(results, indent=2) + "\n")
    print(f"HS {score.score:.1f} %, HS+ {score.score_plus:.1f} % on {len(prompts)} prompts; wrote {output}")
    return 0
