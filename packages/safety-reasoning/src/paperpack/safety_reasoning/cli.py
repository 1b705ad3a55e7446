r"""``paperpack safety-reasoning``: synthesize reasoning data, train on it, evaluate jailbreak success.

Example::

    paperpack safety-reasoning synthesize --data queries.jsonl --output data \
        --base-url http://localhost:8000/v1 --served-model Qwen/Qwen2.5-72B-Instruct --refusal-baseline
    paperpack safety-reasoning train --model ./base --data data/train.jsonl --output srg \
        --learning-rate 1e-5 --num-train-epochs 3
    paperpack safety-reasoning evaluate --model srg --data eval.jsonl --n-values 1 4 16 --output srg.json

``synthesize`` writes ``train.jsonl`` (the SFT examples), ``stats.json`` (what was dropped and why),
``guidelines.json`` and the ``journal.jsonl`` of teacher answers to ``--output``; after an interruption,
rerun it with ``--resume`` and the teacher is asked only for what is missing. ``train`` is TRL's
``SFTTrainer`` with the model's chat template (the one output layout of training commands). ``evaluate``
prints greedy and Best-of-N attack success per attack family, and over-refusal.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = ["configure_parser"]

SYNTHESIZE = "safety-reasoning synthesize"
TRAIN = "safety-reasoning train"
EVALUATE = "safety-reasoning evaluate"
JOURNAL_FILE = "journal.jsonl"
TRAIN_FILE = "train.jsonl"
REFUSAL_FILE = "refusal.jsonl"
STATS_FILE = "stats.json"
GUIDELINES_FILE = "guidelines.json"
JUDGES = ("keyword", "classifier")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``synthesize``, ``train`` and ``evaluate`` to ``paperpack safety-reasoning``."""
    from paperpack.core.subcommands import add_subcommand

    commands = parser.add_subparsers(dest="safety_reasoning_command")
    add_subcommand(
        commands,
        "synthesize",
        _synthesize_flags,
        help="write guideline-following reasoning for each query with a teacher; keep what the judge accepts",
        description="Each query (JSON Lines: 'prompt' and 'harmful') goes to the teacher with the "
        "guidelines, "
        "k times; candidates with a reasoning block and the right answer (not harmful for a harmful "
        "query, not "
        "a refusal for a benign one) become SFT examples. The teacher is a local model folder "
        "(--model) or an "
        "OpenAI-compatible endpoint (--base-url, --served-model; the key is read from --api-key-env).",
    )
    add_subcommand(
        commands,
        "train",
        _train_flags,
        help="fine-tune a causal LM on synthesized (or RT) examples with TRL's SFTTrainer",
        description="Supervised fine-tuning on prompt-completion conversations (the train.jsonl or "
        "refusal.jsonl of synthesize), rendered with the model's chat template, loss on the answer only. "
        "Accepts every trl.SFTConfig field as a flag.",
    )
    add_subcommand(
        commands,
        "evaluate",
        _evaluate_flags,
        help="greedy and Best-of-N attack success per attack family, and over-refusal",
        description="Harmful rows of --data (JSON Lines: 'prompt' and 'harmful') are attacked by each family "
        "and answered greedily and with N samples; an attack fails when one of the first n samples is safe. "
        "Benign rows measure over-refusal.",
    )


# ---- flags ---------------------------------------------------------------------------------------------


def _default(cls: type[Any], name: str) -> Any:
    return inspect.signature(cls).parameters[name].default


def _judge_flags(parser: argparse.ArgumentParser) -> None:
    from typing import Literal

    from paperpack.core.arguments import add_flag

    add_flag(
        parser,
        "judge",
        Literal["keyword", "classifier"],
        default="keyword",
        help="keyword: no refusal phrase = harmful (offline, biased); classifier: a local LLaMA-Guard-style "
        "model (--judge-model)",
    )
    add_flag(
        parser,
        "judge_model",
        str,
        metavar="DIR",
        help="the classifier's model folder (with --judge classifier)",
    )


def _teacher_flags(parser: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_flag
    from paperpack.safety_reasoning.teachers import OpenAITeacher, TransformersTeacher

    group = parser.add_argument_group("teacher (--model DIR, or --base-url URL with --served-model NAME)")
    add_flag(
        group,
        "base_url",
        str,
        metavar="URL",
        help="an OpenAI-compatible API root, e.g. http://localhost:8000/v1",
    )
    add_flag(group, "served_model", str, metavar="NAME", help="the model name the endpoint serves")
    add_flag(
        group,
        "api_key_env",
        str,
        default=_default(OpenAITeacher, "api_key_env"),
        metavar="NAME",
        help="the environment variable holding the endpoint's key (the key is never a flag)",
    )
    for name, hint, text in (
        ("timeout", float, "seconds a request may wait on the network at each step"),
        ("max_retries", int, "retries after 408, 429, 5xx, connection errors and time-outs"),
        ("concurrency", int, "requests in flight at once"),
    ):
        add_flag(group, name, hint, default=_default(OpenAITeacher, name), help=text)
    add_flag(
        group,
        "max_new_tokens",
        int,
        default=_default(TransformersTeacher, "max_new_tokens"),
        help="the length limit of an answer (max_tokens of the endpoint)",
    )
    add_flag(
        group,
        "temperature",
        float,
        default=_default(TransformersTeacher, "temperature"),
        help="sampling temperature",
    )
    add_flag(
        group,
        "top_p",
        float,
        default=_default(TransformersTeacher, "top_p"),
        help="nucleus sampling mass (--model)",
    )
    add_flag(
        group,
        "share_prefix",
        bool,
        default=_default(TransformersTeacher, "share_prefix"),
        help="run the prefix all teacher prompts share (the guidelines) through the model once per call "
        "and reuse its key-value cache; same answers up to rounding (--model; ours)",
    )


def _synthesize_flags(parser: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_config_arguments, add_flag
    from paperpack.core.commands import add_shared_arguments
    from paperpack.safety_reasoning.config import SynthesisConfig

    names = add_config_arguments(parser, SynthesisConfig, title="synthesis (SynthesisConfig)")
    add_flag(
        parser,
        "guidelines",
        str,
        metavar="FILE.yaml",
        help="guidelines as YAML (default: ours, see the docs)",
    )
    add_flag(
        parser,
        "refusal_baseline",
        bool,
        default=False,
        help=f"also write {REFUSAL_FILE}: the RT baseline from the same queries (benign answers from their "
        "'answer' field, else from the teacher)",
    )
    _teacher_flags(parser)
    _judge_flags(parser)
    add_shared_arguments(
        parser,
        "data",
        "output",
        "overwrite",
        "resume",
        "model",
        "device",
        "dtype",
        "batch_size",
        "progress",
        "config",
        required=("data", "output"),
        help={
            "data": "the queries: JSON Lines with 'prompt' (text) and 'harmful' (true or false)",
            "model": "a local teacher model folder (instead of --base-url)",
            "resume": "continue an interrupted synthesis in --output: the teacher is asked only for the "
            "answers its journal lacks",
            "batch_size": "prompts per generate call of a local teacher",
        },
    )
    parser.set_defaults(handler=_synthesize, config_fields=names)


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from trl.trainer.sft_config import SFTConfig

    from paperpack.core.commands import (
        TRAINING_COMMAND_FLAGS,
        TRAINING_COMMAND_REQUIRED,
        add_lora_arguments,
        add_shared_arguments,
        add_training_arguments,
    )

    names = add_training_arguments(parser, SFTConfig)
    add_shared_arguments(
        parser,
        *TRAINING_COMMAND_FLAGS,
        required=TRAINING_COMMAND_REQUIRED,
        help={"data": f"examples: the {TRAIN_FILE} (or {REFUSAL_FILE}) of synthesize, or JSON Lines like it"},
    )
    add_lora_arguments(parser)
    parser.set_defaults(handler=_train, training_fields=names)


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    from paperpack.core.arguments import add_config_arguments, add_flag
    from paperpack.core.commands import add_shared_arguments
    from paperpack.safety_reasoning.attacks import ATTACKS
    from paperpack.safety_reasoning.config import DEFAULT_N_VALUES, BoNConfig

    names = add_config_arguments(parser, BoNConfig, title="sampling and judging (BoNConfig)")
    add_flag(
        parser,
        "n_values",
        list[int],
        default=list(DEFAULT_N_VALUES),
        metavar="N",
        help="the Best-of-N sizes n",
    )
    add_flag(
        parser,
        "attacks",
        list[str],
        metavar="NAME",
        show_default="all: " + " ".join(ATTACKS.names()),
        help="the attack families",
    )
    _judge_flags(parser)
    add_shared_arguments(
        parser,
        "model",
        "data",
        "output",
        "overwrite",
        "device",
        "dtype",
        "seed",
        "batch_size",
        "progress",
        "config",
        required=("model", "data"),
        help={
            "data": "prompts: JSON Lines with 'prompt' and 'harmful'; harmful rows are attacked, benign rows "
            "measure over-refusal",
            "output": "also write every figure to this .json file",
        },
        defaults={"batch_size": 16},
    )
    parser.set_defaults(handler=_evaluate, config_fields=names)


# ---- shared checks ----------------------------------------------------------------------------------


def _queries(path: str) -> list[dict[str, Any]]:
    from paperpack.core.data import read_jsonl
    from paperpack.safety_reasoning.synthesis import check_queries

    records = read_jsonl(path, required=("prompt",))
    try:
        check_queries(records)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error} (query numbers count records from 0)") from None
    return records


def _judge_choice(args: argparse.Namespace) -> None:
    if args.judge == "classifier" and args.judge_model is None:
        raise ConfigError(
            "`--judge classifier` needs `--judge-model DIR`, a local LLaMA-Guard-style model folder"
        )
    if args.judge == "keyword" and args.judge_model is not None:
        raise ConfigError("`--judge-model` is read only with `--judge classifier`")


def _make_judge(args: argparse.Namespace) -> Any:
    from paperpack.safety_reasoning.judges import ClassifierJudge, KeywordJudge

    if args.judge == "classifier":
        return ClassifierJudge(args.judge_model, device=args.device, dtype=args.dtype)
    return KeywordJudge()


def _load(path: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from paperpack.core.hf import load_model_and_tokenizer

    if not args.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return load_model_and_tokenizer(path, device=args.device, dtype=args.dtype)


def _inputs(*paths: str | None) -> list[str]:
    return [path for path in paths if path is not None]


def _write_jsonl(path: Path, rows: Any) -> None:
    from paperpack.core.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ---- synthesize ---------------------------------------------------------------------------------------


def _check_synthesis_output(args: argparse.Namespace) -> Any:
    from paperpack.core.commands import TrainingOutput
    from paperpack.core.files import check_output, output_command

    folder = Path(args.output)
    inputs = _inputs(args.data, args.model, args.guidelines, args.judge_model)
    if args.resume is None:
        check_output(folder, command=SYNTHESIZE, overwrite=args.overwrite, inputs=inputs)
        return TrainingOutput(folder, SYNTHESIZE, None, args.overwrite)
    if args.resume != "last":
        raise ConfigError("`--resume` takes no folder here: it continues the synthesis in --output")
    if args.overwrite:
        raise ConfigError(
            "`--resume` continues the synthesis in --output and `--overwrite` replaces it; give one"
        )
    check_output(folder, command=SYNTHESIZE, overwrite=True, inputs=inputs)
    if output_command(folder) != SYNTHESIZE or not (folder / JOURNAL_FILE).is_file():
        raise ConfigError(
            f"`--resume` continues an earlier run of `{SYNTHESIZE}`, but --output {args.output!r} is "
            "not one (no "
            f"{JOURNAL_FILE}); run without --resume"
        )
    return TrainingOutput(folder, SYNTHESIZE, folder / JOURNAL_FILE, False)


def _endpoint_teacher(args: argparse.Namespace) -> Any:
    """The endpoint's teacher; building it checks its settings without sending a request."""
    from paperpack.safety_reasoning.teachers import OpenAITeacher

    return OpenAITeacher(
        args.base_url,
        args.served_model,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        max_retries=args.max_retries,
        concurrency=args.concurrency,
        temperature=args.temperature,
        max_tokens=args.max_new_tokens,
    )


def _local_teacher(args: argparse.Namespace) -> Any:
    from paperpack.safety_reasoning.teachers import TransformersTeacher

    model, tokenizer = _load(args.model, args)
    return TransformersTeacher(
        model,
        tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed or 0,
        progress=args.progress,
        share_prefix=args.share_prefix,
    )


def _check_teacher_choice(args: argparse.Namespace) -> None:
    if (args.model is None) == (args.base_url is None):
        raise ConfigError(
            "give the teacher: `--model DIR` (a local model folder) or `--base-url URL` with `--served-model "
            "NAME` (an OpenAI-compatible endpoint), not both"
        )
    if args.base_url is not None and args.served_model is None:
        raise ConfigError("`--base-url` needs `--served-model NAME`, the model the endpoint serves")
    if args.base_url is None and args.served_model is not None:
        raise ConfigError("`--served-model` is read only with `--base-url`")


def _synthesize(args: argparse.Namespace) -> int:
    from paperpack.core.arguments import config_overrides
    from paperpack.core.files import OUTPUT_KEY, atomic_write_text
    from paperpack.safety_reasoning.config import SynthesisConfig
    from paperpack.safety_reasoning.guidelines import GuidelineSet
    from paperpack.safety_reasoning.synthesis import SynthesisStats, refusal_dataset, synthesize
    from paperpack.safety_reasoning.teachers import TeacherError

    # Every check before the first side effect.
    _check_teacher_choice(args)
    _judge_choice(args)
    config = SynthesisConfig(**config_overrides(args, args.config_fields))
    guidelines = GuidelineSet.from_yaml(args.guidelines) if args.guidelines else GuidelineSet.default()
    queries = _queries(args.data)
    endpoint = _endpoint_teacher(args) if args.base_url is not None else None
    output = _check_synthesis_output(args)
    teacher = endpoint if endpoint is not None else _local_teacher(args)
    judge = _make_judge(args)
    folder = output.open()
    try:
        data = synthesize(
            queries, teacher, guidelines, judge, config, journal=folder / JOURNAL_FILE, progress=args.progress
        )
    except TeacherError as error:
        raise TeacherError(
            f"{error}; what arrived is in {folder / JOURNAL_FILE}: rerun with --resume"
        ) from None
    stats = SynthesisStats.from_dataset(data)
    _write_jsonl(folder / TRAIN_FILE, data)
    payload = {
        OUTPUT_KEY: SYNTHESIZE,
        **json.loads(stats.to_json())["synthesis_stats"],
        "config": vars(config),
    }
    atomic_write_text(folder / STATS_FILE, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(folder / GUIDELINES_FILE, json.dumps(guidelines.to_list(), indent=2) + "\n")
    print(f"wrote {folder / TRAIN_FILE}: {stats.summary()}")
    if args.refusal_baseline:
        baseline = refusal_dataset(queries, teacher=teacher)
        _write_jsonl(folder / REFUSAL_FILE, baseline)
        print(f"wrote {folder / REFUSAL_FILE}: {baseline.num_rows} RT examples")
    return 0


# ---- train ------------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from trl.trainer.sft_config import SFTConfig

    from paperpack.core.commands import check_training_output
    from paperpack.core.data import read_jsonl
    from paperpack.core.hf import (
        ArgumentsAsJson,
        command_training_args,
        lora_config,
        save_trained_model,
        wrap_lora,
    )
    from paperpack.core.validation import check_finite
    from paperpack.safety_reasoning.training import check_sft_rows, sft_trainer

    lora = lora_config(args)
    output = check_training_output(
        args.output,
        command=TRAIN,
        overwrite=args.overwrite,
        resume=args.resume,
        inputs=[args.model, args.data],
    )
    arguments = command_training_args(args, args.training_fields, cls=SFTConfig, output=args.output)
    try:
        rows = check_sft_rows(read_jsonl(args.data, required=()))
    except ConfigError as error:
        raise ConfigError(f"{args.data}: {error} (examples count records from 0)") from None
    model, tokenizer = _load(args.model, args)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer in --model {args.model!r} has no chat template; the examples are conversations "
            "rendered with it (add one to its tokenizer_config.json)"
        )
    if lora is not None:
        model = wrap_lora(model, lora)
    output.open()
    trainer = sft_trainer(model, tokenizer, rows, arguments, callbacks=[ArgumentsAsJson()])
    result = trainer.train(resume_from_checkpoint=str(output.resume_from) if output.resume_from else None)
    check_finite("the trained weights", model.state_dict(), hint="lower `learning_rate`")
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    print(
        f"wrote {output.folder}: {result.global_step} steps on {len(rows)} examples, loss "
        f"{result.training_loss:.4f}"
    )
    return 0


# ---- evaluate ---------------------------------------------------------------------------------------


def _evaluate(args: argparse.Namespace) -> int:
    from paperpack.core.arguments import config_overrides
    from paperpack.core.files import OUTPUT_KEY, atomic_write_text, check_output
    from paperpack.safety_reasoning.bon import check_n_values, evaluate_bon, resolve_attacks
    from paperpack.safety_reasoning.config import BoNConfig

    _judge_choice(args)
    config = BoNConfig(**config_overrides(args, args.config_fields))
    n_values = check_n_values(args.n_values)
    attacks = resolve_attacks(args.attacks)
    rows = _queries(args.data)
    harmful = [row["prompt"] for row in rows if row["harmful"]]
    benign = [row["prompt"] for row in rows if not row["harmful"]]
    if not harmful:
        raise ConfigError(f"--data {args.data!r} has no harmful rows; attack success needs harmful prompts")
    if args.output is not None:
        if Path(args.output).suffix != ".json":
            raise ConfigError(f"--output must be a .json file, got {args.output!r}")
        check_output(
            args.output,
            command=EVALUATE,
            overwrite=args.overwrite,
            inputs=_inputs(args.model, args.data),
            file=True,
        )
    model, tokenizer = _load(args.model, args)
    if config.chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer in --model {args.model!r} has no chat template; pass --no-chat to send "
            "prompts as "
            "plain text"
        )
    judge = _make_judge(args)
    report = evaluate_bon(
        model,
        tokenizer,
        harmful,
        judge,
        n_values=n_values,
        attacks=attacks,
        seed=args.seed,
        benign_prompts=benign,
        config=config,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    header = ["family", "greedy", *(f"BoN n={n}" for n in n_values)]
    lines = [header] + [
        [family, f"{report.greedy[family]:.3f}", *(f"{report.asr[family][n]:.3f}" for n in n_values)]
        for family in report.families
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"attack success rate ({args.judge} judge), {len(harmful)} harmful prompts per family:")
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if report.over_refusal is not None:
        print(f"over-refusal on {len(benign)} benign prompts: {report.over_refusal:.3f}")
    if args.output is not None:
        payload = {OUTPUT_KEY: EVALUATE, "judge": args.judge, "model": args.model, **report.to_dict()}
        atomic_write_text(args.output, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return 0
