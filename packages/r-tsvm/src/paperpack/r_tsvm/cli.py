"""The ``paperpack merge`` and ``paperpack r-tsvm`` commands, on the core's command-line convention.

.. code-block:: console

    $ paperpack merge RECIPE.yaml --output DIR [--overwrite] [--dry-run]
    $ paperpack r-tsvm merge --base-model DIR --models DIR DIR ... --output DIR [--kappa 3 ...]
    $ paperpack r-tsvm methods
    $ paperpack r-tsvm statistics --model DIR --data FILE.jsonl --kind fisher --output FILE.safetensors

``paperpack merge`` runs any registered method from a mergekit-style recipe; ``paperpack r-tsvm merge`` runs
R-TSVM with every parameter as a flag (generated from :class:`~paperpack.r_tsvm.RTSVMConfig` and the recipe's
output options); ``methods`` lists every method; ``statistics`` writes the per-model file that a ``fisher`` or
``regmean`` recipe names under ``statistics:``. The shared flags (``--model``, ``--data``, ``--output``,
``--overwrite``, ``--device``, ``--dtype``, ``--seed``, ``--max-length``, ``--batch-size``,
``--progress/--no-progress``, ``--config``) mean what the core's convention says. Heavy imports happen inside
the handlers so that ``paperpack --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from paperpack.core.arguments import add_config_arguments, add_flag, config_overrides
from paperpack.core.commands import add_shared_arguments
from paperpack.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["STATISTIC_KINDS", "StatisticsConfig", "configure_merge_parser", "configure_parser"]

#: The statistics ``paperpack r-tsvm statistics --kind`` computes, and the merge method that reads each.
STATISTIC_KINDS = {"fisher": "fisher", "gram": "regmean"}
#: ``--dtype`` spellings for a merge's output, by the output dtype they name (``auto``: the base's).
_OUTPUT_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass
class StatisticsConfig:
    """What ``paperpack r-tsvm statistics`` computes.

    Args:
        kind: ``fisher`` (diagonal Fishers, for ``merge_method: fisher``) or ``gram`` (every linear layer's
            input Gram matrix, for ``merge_method: regmean``).
        max_examples: use only the first N texts of ``--data``.
        true_fisher: sample the labels from the model (the paper's true Fisher) instead of using the data's.
    """

    kind: Literal["fisher", "gram"] = field(
        metadata={"help": "fisher (for merge_method: fisher) or gram (for merge_method: regmean)"}
    )
    max_examples: int | None = field(
        default=None, metadata={"help": "use only the first N texts (default: all)"}
    )
    true_fisher: bool = field(
        default=False,
        metadata={"help": "sample the labels from the model (the paper's true Fisher) instead of the data's"},
    )

    def __post_init__(self) -> None:
        from paperpack.core.validation import check_bool, check_int, check_literal_fields

        check_literal_fields(self)
        if self.max_examples is not None:
            check_int("max_examples", self.max_examples, minimum=1)
        check_bool("true_fisher", self.true_fisher)
        if self.true_fisher and self.kind != "fisher":
            raise ConfigError("`true_fisher` applies to `kind` fisher only")


def _output_dtype(value: str) -> str | None:
    if value == "auto":
        return None
    if value not in _OUTPUT_DTYPES:
        raise ConfigError(
            f"`dtype` must be auto (the base model's), float32, bfloat16 or float16, got {value!r}"
        )
    return _OUTPUT_DTYPES[value]


def _merge(config: Any, args: argparse.Namespace, command: str) -> Path:
    """Check the output, then merge: the common end of both merge commands."""
    from paperpack.r_tsvm.streaming import check_merge_output, merge_checkpoints

    check_merge_output(args.output, config, command=command, overwrite=args.overwrite, flag="--output")
    return merge_checkpoints(
        config,
        args.output,
        progress=args.progress,
        device=args.device,
        overwrite=args.overwrite,
        command=command,
    )


def _run_recipe(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.recipe import MergeConfig

    config = MergeConfig.from_yaml(args.recipe)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0
    output = _merge(config, args, "merge")
    what = (
        f"{len(config.models)} model(s)"
        if config.models is not None
        else f"{len(config.slices or [])} slice(s)"
    )
    print(f"merged {what} with {config.merge_method} into {output}")
    return 0


def configure_merge_parser(parser: argparse.ArgumentParser) -> None:
    """Set up ``paperpack merge RECIPE.yaml --output DIR``."""
    parser.description = (
        "Merge models from a YAML recipe in mergekit's format (merge_method, base_model, models or slices, "
        "parameters), streaming one tensor at a time. Run `paperpack r-tsvm methods` for the methods and "
        "their parameters."
    )
    parser.add_argument(
        "recipe",
        metavar="RECIPE.yaml",
        help="the merge recipe; relative paths in it are resolved against its folder",
    )
    add_shared_arguments(
        parser,
        "output",
        "overwrite",
        "device",
        "progress",
        required=("output",),
        help={
            "output": "the output: a model folder, or a .safetensors file (new, empty, or an earlier merge "
            "with --overwrite)"
        },
    )
    add_flag(
        parser, "dry_run", bool, help="validate the recipe and print it in full; write nothing", default=False
    )
    parser.set_defaults(handler=_run_recipe)


def _run_r_tsvm(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.recipe import MergeConfig, ModelSpec

    if args.weights is not None and len(args.weights) != len(args.models):
        raise ConfigError(
            f"`weights` must give one number per model of `models` ({len(args.models)}), "
            f"got {len(args.weights)}"
        )
    weights = args.weights or [None] * len(args.models)
    config = MergeConfig(
        merge_method="r_tsvm",
        base_model=args.base_model,
        models=[
            ModelSpec(model=path, parameters={} if weight is None else {"weight": weight})
            for path, weight in zip(args.models, weights, strict=True)
        ],
        parameters=config_overrides(args, args.config_fields),
        dtype=_output_dtype(args.dtype),  # type: ignore[arg-type]
        **config_overrides(args, args.recipe_fields),
    )
    output = _merge(config, args, "r-tsvm merge")
    print(
        f"merged {len(args.models)} model(s) with R-TSVM into {output} (per-layer report: merge_report.json)"
    )
    return 0


def _list_methods(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.registry import get_method, list_methods

    for name in list_methods():
        method = get_method(name)
        defaults = [f"{name}={value!r}" for name, value in dataclasses.asdict(method.config_class()).items()]
        needs = "base model" if method.uses_base else "optional base" if method.optional_base else "no base"
        if method.statistic:
            needs += f", {method.statistic} statistics"
        if method.per_model:
            needs += f"; per model: {', '.join(method.per_model)}"
        alias = f" (alias of {method.name})" if name != method.name else ""
        print(f"{name:16s} {method.title}{alias} [{needs}] {method.reference}")
        print(f"{'':16s} {', '.join(defaults)}")
    return 0


def _run_statistics(args: argparse.Namespace) -> int:
    from paperpack.core.data import causal_lm_batches, read_jsonl
    from paperpack.core.files import check_output
    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.r_tsvm.statistics import compute_fisher, compute_gram

    settings = StatisticsConfig(**config_overrides(args, args.statistics_fields))
    if Path(args.output).suffix != ".safetensors":
        raise ConfigError(f"`output` must be a .safetensors file, got {args.output!r}")
    command = "r-tsvm statistics"
    check_output(
        args.output, command=command, overwrite=args.overwrite, inputs=[args.model, args.data], file=True
    )
    records = read_jsonl(args.data, required=("text",))
    texts = [record["text"] for record in records][: settings.max_examples]
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    device = next(model.parameters()).device
    batches = [
        {name: value.to(device) for name, value in batch.items()}
        for batch in causal_lm_batches(
            tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length
        )
    ]
    stats: dict[str, Tensor]
    if settings.kind == "fisher":
        stats = compute_fisher(model, batches, empirical=not settings.true_fisher, seed=args.seed)
        # Tied weights are one parameter under two checkpoint names; the recipe may look up either.
        names = {id(param): name for name, param in model.named_parameters()}
        for key, value in model.state_dict(keep_vars=True).items():
            if key not in stats and names.get(id(value)) in stats:
                stats[key] = stats[names[id(value)]]
    else:
        stats = compute_gram(model, batches)
    _save_statistics(args, settings, command=command, stats=stats, texts=texts, batches=batches)
    return 0


def _save_statistics(
    args: argparse.Namespace,
    settings: StatisticsConfig,
    *,
    command: str,
    stats: dict[str, Tensor],
    texts: list[str],
    batches: list[dict[str, Tensor]],
) -> None:
    from paperpack.core.checkpoints import save_state_dict
    from paperpack.core.validation import check_finite

    check_finite(f"the {settings.kind} statistics", stats)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    record: dict[str, Any] = {
        "kind": settings.kind,
        "model": str(args.model),
        "data": str(args.data),
        "examples": len(texts),
        "tokens": tokens,
        "max_length": args.max_length,
    }
    if settings.kind == "fisher":
        record.update(empirical=not settings.true_fisher, seed=args.seed)
    output = save_state_dict(
        {name: value.detach().cpu().contiguous() for name, value in stats.items()},
        args.output,
        metadata={"paperpack_r_tsvm_statistics": json.dumps(record)},
        command=command,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {settings.kind} statistics of {len(stats)} weight(s) over {len(texts)} example(s) ({tokens} "
        f"tokens) to {output}; use it as `statistics:` of {args.model} in a "
        f"`merge_method: {STATISTIC_KINDS[settings.kind]}` recipe"
    )


def _configure_statistics(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statistics = commands.add_parser(
        "statistics",
        help="compute a model's Fishers (fisher) or Gram matrices (regmean) for a recipe",
        description="Compute the per-model statistics that `merge_method: fisher` (--kind fisher: diagonal "
        "Fishers, per-example squared gradients) or `merge_method: regmean` (--kind gram: every linear "
        "layer's input Gram matrix) needs, from the texts of a JSON Lines file, and write them as one "
        ".safetensors file to name under `statistics:` in the recipe. Padding is left out.",
    )
    add_shared_arguments(
        statistics,
        "model",
        "data",
        "output",
        "overwrite",
        "max_length",
        "batch_size",
        "seed",
        "device",
        "dtype",
        "config",
        required=("model", "data", "output"),
        help={
            "data": "JSON Lines with a 'text' field per record",
            "output": "the statistics file to write (.safetensors): new, or an earlier one with --overwrite",
            "seed": "seed of the --true-fisher label sampling",
            "dtype": "the model's dtype while computing",
        },
        defaults={"dtype": "float32"},
    )
    fields = add_config_arguments(statistics, StatisticsConfig)
    statistics.set_defaults(handler=_run_statistics, statistics_fields=fields)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Set up the ``merge``, ``methods`` and ``statistics`` subcommands of ``paperpack r-tsvm``.

    Args:
        parser: the ``paperpack r-tsvm`` parser, given its subcommands here.
    """
    from paperpack.r_tsvm.config import MergeOutputOptions, RTSVMConfig

    parser.description = (
        "R-TSVM / RESM (arXiv:2502.06876): TSV-M with outlier-aware weights and adaptive ranks."
    )
    commands = parser.add_subparsers(dest="r_tsvm_command", metavar="COMMAND")
    merge = commands.add_parser(
        "merge",
        help="merge checkpoints with R-TSVM",
        description="Merge fine-tuned models (folders, sharded safetensors or LoRA adapters) into a base "
        "with R-TSVM; every parameter of the method is a flag (defaults: ours, see the docs).",
    )
    add_flag(
        merge,
        "base_model",
        str,
        help="the base model θ_0 the experts were fine-tuned from",
        required=True,
        metavar="DIR",
    )
    add_flag(
        merge,
        "models",
        list[str],
        help="the fine-tuned models or LoRA adapters",
        required=True,
        metavar="DIR",
    )
    add_flag(merge, "weights", list[float], help="one weight w_t per model (default: 1 each)", metavar="W")
    add_shared_arguments(
        merge,
        "output",
        "overwrite",
        "device",
        "dtype",
        "progress",
        "config",
        required=("output",),
        help={
            "output": "the output model folder: new, empty, or an earlier `r-tsvm merge` with --overwrite",
            "dtype": "the output's dtype: auto (the base model's), float32, bfloat16 or float16",
        },
    )
    recipe_fields = add_config_arguments(
        merge, MergeOutputOptions, exclude=("dtype",), title="output options (as in a recipe)"
    )
    fields = add_config_arguments(merge, RTSVMConfig, title="R-TSVM parameters")
    merge.set_defaults(handler=_run_r_tsvm, config_fields=fields, recipe_fields=recipe_fields)
    methods = commands.add_parser("methods", help="list every merge method, its paper and its parameters")
    methods.set_defaults(handler=_list_methods)
    _configure_statistics(commands)
