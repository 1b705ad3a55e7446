r"""``paperpack merge-router``: compile a Mediator, measure conflict per layer, generate with a compiled one.

Examples::

    paperpack merge-router compile mediator.yaml --output mediator
    paperpack merge-router conflicts --base-model base --experts sort=experts/sort reverse=experts/reverse \
        --output conflicts.png
    paperpack merge-router generate --model mediator --prompt "sort the digits 3 1 2" --max-new-tokens 8

The recipe of ``compile`` (relative paths are read from the recipe's folder)::

    base_model: base
    experts:                  # task name: a model folder or a PEFT LoRA adapter folder on base_model
      sort: experts/sort
      reverse: experts/reverse
    prompts:                  # task name: a list of prompts, or a .jsonl file with a "text" field per line
      sort: ["sort the digits 3 1 2", "sort the digits 9 4 7"]
      reverse: prompts/reverse.jsonl
    mediator:                 # MediatorConfig fields (optional); the command line's flags win
      sparse_density: 0.1

The flags follow paperpack's convention (``--model``, ``--output``, ``--overwrite``, ``--device``,
``--dtype``, ``--progress``); Mediator's knobs come from ``MediatorConfig``, one
flag per field. Heavy imports happen inside the handlers, so ``paperpack merge-router --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from paperpack.core.arguments import add_config_arguments, add_flag, config_overrides
from paperpack.core.commands import add_shared_arguments
from paperpack.core.errors import ConfigError

__all__ = ["RECIPE_KEYS", "configure_parser", "read_recipe"]

#: The top-level keys of a ``compile`` recipe.
RECIPE_KEYS = ("base_model", "experts", "prompts", "mediator")
#: The MediatorConfig fields ``conflicts`` reads.
CONFLICT_FIELDS = ("conflict", "trim_density", "unit")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``compile``, ``conflicts`` and ``generate`` subcommands to ``paperpack merge-router``."""
    from paperpack.merge_router.config import MediatorConfig

    commands = parser.add_subparsers(dest="merge_router_command", metavar="COMMAND")
    compile_ = commands.add_parser(
        "compile",
        help="compile experts of one base into a Mediator folder",
        description="Measure the conflict of every layer between the experts, average the layers with little "
        "conflict, keep a dense plus one sparse expert per task for the others, train the task router on the "
        "recipe's prompts, and write one folder (the dense model in HF format, the sparse experts, the "
        "router, mediator_config.json) atomically.",
    )
    compile_.add_argument("recipe", metavar="RECIPE.yaml", help="base_model, experts, prompts, mediator")
    add_shared_arguments(compile_, "output", "overwrite", "device", "progress", required=("output",))
    add_flag(
        compile_, "max_shard_size", str, default="5GB", metavar="SIZE", help="bytes per dense-model shard"
    )
    names = add_config_arguments(compile_, MediatorConfig, title="mediator (over the recipe's `mediator:`)")
    compile_.set_defaults(handler=_compile, config_fields=names)

    conflicts = commands.add_parser(
        "conflicts",
        help="print d_l, the parameter conflict per layer between experts, and plot it",
        description="Measure d_l for every unit (decoder block or module) between experts fine-tuned from "
        "one base; print a table and, with --output, write a bar plot (PNG).",
    )
    add_flag(conflicts, "base_model", str, required=True, metavar="DIR", help="the base model folder θ_0")
    add_flag(
        conflicts,
        "experts",
        list[str],
        required=True,
        metavar="[NAME=]DIR",
        help="two or more expert folders (full models or PEFT LoRA adapters), each optionally named NAME=DIR "
        "(default: the folder's name)",
    )
    add_flag(conflicts, "output", str, metavar="FILE.png", help="write the plot here (a new file)")
    add_shared_arguments(conflicts, "device", "progress")
    names = add_config_arguments(
        conflicts,
        MediatorConfig,
        exclude=[f.name for f in _fields(MediatorConfig) if f.name not in CONFLICT_FIELDS],
    )
    conflicts.set_defaults(handler=_conflicts, config_fields=names)

    generate = commands.add_parser(
        "generate",
        help="route prompts and generate with a compiled Mediator",
        description="Route each prompt (or force --task), then generate greedily on the dense model with the "
        "chosen sparse experts; prints the routing and the completion of each prompt.",
    )
    add_flag(generate, "prompt", list[str], required=True, metavar="TEXT", help="one or more prompts")
    add_flag(
        generate, "task", str, metavar="NAME", help="use this task's expert for every prompt (no routing)"
    )
    add_flag(generate, "max_new_tokens", int, default=32, metavar="N", help="tokens to generate per prompt")
    add_shared_arguments(
        generate,
        "model",
        "device",
        "dtype",
        required=("model",),
        help={"model": "a folder written by `paperpack merge-router compile`"},
    )
    generate.set_defaults(handler=_generate)


def _fields(cls: type[Any]) -> list[Any]:
    import dataclasses

    return list(dataclasses.fields(cls))


def _read_prompts(value: object, root: Path, name: str) -> dict[str, list[str]]:
    """The recipe's ``prompts``: per task a list, or a .jsonl file (under ``root``) with a "text" field."""
    from paperpack.core.data import read_jsonl

    if not isinstance(value, dict):
        raise ConfigError(f"`prompts` in {name} must map task names to prompts, got {value!r}")
    prompts: dict[str, list[str]] = {}
    for task, texts in value.items():
        if isinstance(texts, str):
            file = root / texts
            if not file.is_file():
                raise ConfigError(f"`prompts` of task {task!r} in {name}: {os.fspath(file)!r} is not a file")
            prompts[task] = [record["text"] for record in read_jsonl(file, required=("text",))]
        elif isinstance(texts, list):
            prompts[task] = texts
        else:
            raise ConfigError(
                f"`prompts` of task {task!r} in {name} must be a list of prompts or a .jsonl file, "
                f"got {texts!r}"
            )
    return prompts


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``compile`` recipe: paths resolved against its folder, prompt files read, every key checked.

    Returns:
        ``{"base_model": Path, "experts": {task: Path}, "prompts": {task: [str]},
        "mediator": {field: value}}``.

    Raises:
        ConfigError: naming the recipe's bad key or value.
        FileNotFoundError: when the recipe or a prompt file does not exist.
    """
    from paperpack.core.yaml_io import load_yaml

    recipe = load_yaml(path)
    name = os.fspath(path)
    if not isinstance(recipe, dict):
        raise ConfigError(f"{name} must be a mapping with {', '.join(RECIPE_KEYS)}")
    unknown = [key for key in recipe if key not in RECIPE_KEYS]
    if unknown:
        raise ConfigError(f"{name}: unknown key {unknown[0]!r}; allowed: {', '.join(RECIPE_KEYS)}")
    for key in ("base_model", "experts", "prompts"):
        if key not in recipe:
            raise ConfigError(f"{name} needs `{key}`")
    root = Path(path).parent
    if not isinstance(recipe["base_model"], str):
        raise ConfigError(f"`base_model` in {name} must be a folder, got {recipe['base_model']!r}")
    experts = recipe["experts"]
    if not isinstance(experts, dict) or not all(isinstance(v, str) for v in experts.values()):
        raise ConfigError(f"`experts` in {name} must map task names to folders, got {experts!r}")
    prompts = _read_prompts(recipe["prompts"], root, name)
    mediator = recipe.get("mediator") or {}
    if not isinstance(mediator, dict):
        raise ConfigError(f"`mediator` in {name} must map MediatorConfig fields to values, got {mediator!r}")
    return {
        "base_model": root / recipe["base_model"],
        "experts": {task: root / folder for task, folder in experts.items()},
        "prompts": prompts,
        "mediator": mediator,
    }


def _config(fields: dict[str, Any], source: str) -> Any:
    import dataclasses

    from paperpack.merge_router.config import MediatorConfig

    known = {f.name for f in dataclasses.fields(MediatorConfig)}
    unknown = [name for name in fields if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown MediatorConfig field {unknown[0]!r} in {source}; allowed: {', '.join(sorted(known))}"
        )
    return MediatorConfig(**fields)


def _compile(args: argparse.Namespace) -> int:
    from paperpack.core.files import check_output
    from paperpack.merge_router.compile import COMPILE_COMMAND, compile_mediator

    recipe = read_recipe(args.recipe)
    config = _config({**recipe["mediator"], **config_overrides(args, args.config_fields)}, args.recipe)
    inputs = [recipe["base_model"], *recipe["experts"].values(), args.recipe]
    check_output(args.output, command=COMPILE_COMMAND, overwrite=args.overwrite, inputs=inputs)
    report = compile_mediator(
        recipe["base_model"],
        recipe["experts"],
        recipe["prompts"],
        config,
        args.output,
        overwrite=args.overwrite,
        device=args.device,
        progress=args.progress,
        max_shard_size=args.max_shard_size,
    )
    accuracy = "n/a" if report.router_accuracy is None else f"{report.router_accuracy:.3f}"
    print(
        f"wrote {report.output}: {len(report.routed_units)} of {len(report.conflicts)} units routed "
        f"({report.routed_fraction:.1%} of the parameters), {len(report.tasks)} tasks, router held-out "
        "accuracy "
        f"{accuracy}, {report.storage_bytes} bytes"
    )
    _print_conflicts(report.conflicts, set(report.routed_units))
    return 0


def _expert_arguments(values: list[str]) -> dict[str, str]:
    experts: dict[str, str] = {}
    for value in values:
        name, _, folder = value.rpartition("=") if "=" in value else ("", "", value)
        name = name or Path(folder).name
        if name in experts:
            raise ConfigError(f"`experts` names task {name!r} twice; name them NAME=DIR")
        experts[name] = folder
    return experts


def _print_conflicts(conflicts: dict[str, float], routed: set[str]) -> None:
    width = max(len(unit) for unit in conflicts)
    print(f"{'unit':{width}s}  d_l     routed")
    for unit, value in conflicts.items():
        print(f"{unit:{width}s}  {value:.4f}  {'yes' if unit in routed else ''}")


def _conflicts(args: argparse.Namespace) -> int:
    from paperpack.core.files import check_output
    from paperpack.merge_router.conflicts import layer_conflicts
    from paperpack.merge_router.inputs import check_task_names

    experts = _expert_arguments(args.experts)
    check_task_names(experts)
    config = _config(config_overrides(args, args.config_fields), "the flags")
    if args.output is not None:
        if Path(args.output).suffix.lower() != ".png":
            raise ConfigError(f"`output` must be a .png file, got {args.output!r}")
        check_output(
            args.output,
            command="merge-router conflicts",
            inputs=[args.base_model, *experts.values()],
            file=True,
        )
    conflicts = layer_conflicts(args.base_model, experts, config, device=args.device, progress=args.progress)
    _print_conflicts(conflicts, set())
    if args.output is not None:
        from paperpack.core.plotting import bar_plot

        bar_plot(
            args.output,
            conflicts,
            xlabel=f"d_l ({config.conflict})",
            title=f"parameter conflict per unit between {len(experts)} experts",
        )
        print(f"wrote {args.output}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from paperpack.core.hf import context_length
    from paperpack.core.validation import check_int
    from paperpack.merge_router.model import MediatorModel
    from paperpack.merge_router.router import Routing

    check_int("max_new_tokens", args.max_new_tokens, minimum=1)
    if any(not text for text in args.prompt):
        raise ConfigError("`prompt` must be non-empty texts")
    mediator = MediatorModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if args.task is not None and args.task not in mediator.tasks:
        raise ConfigError(f"`task` must be one of {', '.join(mediator.tasks)}, got {args.task!r}")
    tokenizer = mediator.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(list(args.prompt), return_tensors="pt", padding=True)
    limit = context_length(mediator.model)
    if limit is not None and batch["input_ids"].shape[1] + args.max_new_tokens > limit:
        raise ConfigError(
            f"`max_new_tokens` {args.max_new_tokens} plus the longest prompt ({batch['input_ids'].shape[1]} "
            f"tokens) exceeds the model's {limit} positions"
        )
    routings = (
        mediator.route(args.prompt) if args.task is None else [Routing.forced(args.task)] * len(args.prompt)
    )
    output = mediator.generate(**batch, routing=routings, max_new_tokens=args.max_new_tokens, do_sample=False)
    start = batch["input_ids"].shape[1]
    for text, routing, ids in zip(args.prompt, routings, output, strict=True):
        mix = ", ".join(
            f"{name} {weight:.2f}" for name, weight in zip(routing.experts, routing.weights, strict=True)
        )
        print(f"[{mix}; confidence {routing.confidence:.3f}] {text!r}")
        print(f"  -> {tokenizer.decode(ids[start:], skip_special_tokens=True)!r}")
    return 0
