"""The ``paperpack merge`` and ``paperpack r-tsvm`` commands.

``paperpack merge CONFIG.yaml --output DIR`` runs any registered method from a mergekit-style recipe;
``paperpack r-tsvm merge --base B --models M1 M2 M3 --output DIR [--kappa ...]`` runs the paper's method with
its parameters as flags, ``paperpack r-tsvm methods`` lists every method and its parameters, and
``paperpack r-tsvm statistics MODEL_DIR --data FILE.jsonl --kind fisher --output FILE.safetensors`` writes
the per-model file that a ``fisher`` or ``regmean`` recipe names under ``statistics:``. Heavy imports happen
inside the handlers so that ``paperpack --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paperpack.core.arguments import add_config_arguments, config_overrides

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

__all__ = ["configure_merge_parser", "configure_parser"]

#: The statistics ``paperpack r-tsvm statistics --kind`` computes, and the merge method that reads each.
STATISTIC_KINDS = {"fisher": "fisher", "gram": "regmean"}


def _run_recipe(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.recipe import MergeConfig
    from paperpack.r_tsvm.streaming import merge_checkpoints

    config = MergeConfig.from_yaml(args.config)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0
    output = merge_checkpoints(config, args.output, progress=not args.no_progress, device=args.device)
    what = (
        f"{len(config.models)} model(s)"
        if config.models is not None
        else f"{len(config.slices or [])} slice(s)"
    )
    print(f"merged {what} with {config.merge_method} into {output}")
    return 0


def configure_merge_parser(parser: argparse.ArgumentParser) -> None:
    """Set up ``paperpack merge CONFIG.yaml --output DIR``."""
    parser.description = (
        "Merge models from a YAML recipe (merge_method, base_model, models with per-model weights, "
        "parameters), "
        "streaming one tensor at a time. Run `paperpack r-tsvm methods` for the methods and their parameters."
    )
    parser.add_argument(
        "config", help="the YAML recipe; relative paths in it are resolved against its folder"
    )
    parser.add_argument(
        "--output", "-o", required=True, help="the output model folder (must not be an input)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate the recipe and print it; write nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--device", default="cpu", help="where the arithmetic runs: cpu, cuda, auto (default: cpu)"
    )
    parser.set_defaults(handler=_run_recipe)


def _run_r_tsvm(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.recipe import MergeConfig, ModelSpec
    from paperpack.r_tsvm.streaming import merge_checkpoints

    if args.weights is not None and len(args.weights) != len(args.models):
        from paperpack.core.errors import ConfigError

        raise ConfigError(
            f"--weights must give one number per model ({len(args.models)}), got {len(args.weights)}"
        )
    weights = args.weights or [None] * len(args.models)
    config = MergeConfig(
        merge_method="r_tsvm",
        base_model=args.base,
        models=[
            ModelSpec(model=path, parameters={} if weight is None else {"weight": weight})
            for path, weight in zip(args.models, weights, strict=True)
        ],
        parameters=config_overrides(args, args.config_fields),
        dtype=args.dtype,
        vocab_mismatch=args.vocab_mismatch,
        max_shard_size=args.max_shard_size,
    )
    output = merge_checkpoints(config, args.output, progress=not args.no_progress, device=args.device)
    print(
        f"merged {len(args.models)} model(s) with R-TSVM into {output} (per-layer report: merge_report.json)"
    )
    return 0


def _list_methods(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.registry import get_method, list_methods

    for name in list_methods():
        method = get_method(name)
        defaults = [f"{name}={value!r}" for name, value in dataclasses.asdict(method.config_class()).items()]
        needs = "base model" if method.uses_base else "no base"
        if method.statistic:
            needs += f", {method.statistic} statistics"
        alias = f" (alias of {method.name})" if name != method.name else ""
        print(f"{name:16s} {method.title}{alias} [{needs}] {method.reference}")
        print(f"{'':16s} {', '.join(defaults)}")
    return 0


def _text_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_length: int, batch_size: int
) -> list[dict[str, Tensor]]:
    """Tokenize ``texts`` into padded batches whose ``labels`` leave the padding out (-100)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            from paperpack.core.errors import ConfigError

            raise ConfigError("the model's tokenizer has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        mask = encoded["attention_mask"]
        batches.append(
            {
                "input_ids": encoded["input_ids"],
                "attention_mask": mask,
                "labels": encoded["input_ids"].masked_fill(mask == 0, -100),
            }
        )
    return batches


def _run_statistics(args: argparse.Namespace) -> int:
    from paperpack.core.checkpoints import check_output_path, save_state_dict
    from paperpack.core.data import read_jsonl
    from paperpack.core.errors import ConfigError
    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.core.validation import check_int
    from paperpack.r_tsvm.statistics import compute_fisher, compute_gram

    if Path(args.output).suffix != ".safetensors":
        raise ConfigError(f"--output must be a .safetensors file, got {args.output!r}")
    check_int("--max-length", args.max_length, minimum=2)
    check_int("--batch-size", args.batch_size, minimum=1)
    if args.max_examples is not None:
        check_int("--max-examples", args.max_examples, minimum=1)
    if args.true_fisher and args.kind != "fisher":
        raise ConfigError("--true-fisher applies to --kind fisher only")
    check_output_path(args.output, [args.model, args.data])
    texts = [record["text"] for record in read_jsonl(args.data, required=("text",))][: args.max_examples]
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    device = next(model.parameters()).device
    batches = [
        {name: value.to(device) for name, value in batch.items()}
        for batch in _text_batches(tokenizer, texts, max_length=args.max_length, batch_size=args.batch_size)
    ]
    stats: dict[str, Tensor]
    if args.kind == "fisher":
        stats = compute_fisher(model, batches, empirical=not args.true_fisher, seed=args.seed)
        # Tied weights are one parameter under two checkpoint names; the recipe may look up either.
        names = {id(param): name for name, param in model.named_parameters()}
        for key, value in model.state_dict(keep_vars=True).items():
            if key not in stats and names.get(id(value)) in stats:
                stats[key] = stats[names[id(value)]]
    else:
        stats = compute_gram(model, batches)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    record: dict[str, Any] = {
        "kind": args.kind,
        "model": str(args.model),
        "data": str(args.data),
        "examples": len(texts),
        "tokens": tokens,
        "max_length": args.max_length,
    }
    if args.kind == "fisher":
        record.update(empirical=not args.true_fisher, seed=args.seed)
    output = save_state_dict(
        {name: value.detach().cpu().contiguous() for name, value in stats.items()},
        args.output,
        metadata={"paperpack_r_tsvm_statistics": json.dumps(record)},
    )
    print(
        f"wrote {args.kind} statistics of {len(stats)} weight(s) over {len(texts)} example(s) ({tokens} "
        f"tokens) to {output}; use it as `statistics:` of {args.model} in a "
        f"`merge_method: {STATISTIC_KINDS[args.kind]}` recipe"
    )
    return 0


def _configure_statistics(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statistics = commands.add_parser(
        "statistics",
        help="compute a model's Fishers (fisher) or Gram matrices (regmean) for a recipe",
        description="Compute the per-model statistics that `merge_method: fisher` (--kind fisher: diagonal "
        "Fishers, per-example squared gradients) or `merge_method: regmean` (--kind gram: every linear "
        "layer's input Gram matrix) needs, from the texts of a JSON Lines file, and write them as one "
        ".safetensors file to name under `statistics:` in the recipe. Padding is left out.",
    )
    statistics.add_argument("model", metavar="MODEL_DIR", help="the model folder (with its tokenizer)")
    statistics.add_argument(
        "--data", required=True, metavar="FILE.jsonl", help="JSON Lines with a 'text' field per record"
    )
    statistics.add_argument(
        "--kind",
        required=True,
        choices=list(STATISTIC_KINDS),
        help="fisher (for merge_method: fisher) or gram (for merge_method: regmean)",
    )
    statistics.add_argument(
        "--output", "-o", required=True, metavar="FILE.safetensors", help="the statistics file to write"
    )
    statistics.add_argument(
        "--max-length", type=int, metavar="N", default=256, help="tokens per text (default: %(default)s)"
    )
    statistics.add_argument(
        "--batch-size", type=int, metavar="N", default=8, help="texts per batch (default: %(default)s)"
    )
    statistics.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N texts (default: all)",
    )
    statistics.add_argument(
        "--true-fisher",
        action="store_true",
        help="sample the labels from the model (the paper's true Fisher) instead of using the data's",
    )
    statistics.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="seed of the --true-fisher label sampling (default: %(default)s)",
    )
    statistics.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
    )
    statistics.add_argument(
        "--dtype", default="float32", help="the model's dtype while computing (default: %(default)s)"
    )
    statistics.set_defaults(handler=_run_statistics)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Set up the ``merge``, ``methods`` and ``statistics`` subcommands of ``paperpack r-tsvm``.

    Args:
        parser: the ``paperpack r-tsvm`` parser, given its subcommands here.
    """
    from paperpack.r_tsvm.config import RTSVMConfig

    parser.description = (
        "R-TSVM / RESM (arXiv:2502.06876): TSV-M with outlier-aware weights and adaptive ranks."
    )
    commands = parser.add_subparsers(dest="r_tsvm_command", metavar="COMMAND", required=True)
    merge = commands.add_parser(
        "merge",
        help="merge checkpoints with R-TSVM",
        description="Merge fine-tuned models (folders, sharded safetensors or LoRA adapters) into a base "
        "with R-TSVM; every parameter of the method is a flag (defaults: ours, see the docs).",
    )
    merge.add_argument("--base", required=True, help="the base model θ_0 the experts were fine-tuned from")
    merge.add_argument("--models", nargs="+", required=True, help="the fine-tuned models or LoRA adapters")
    merge.add_argument("--output", "-o", required=True, help="the output model folder")
    merge.add_argument("--weights", nargs="+", type=float, help="one weight w_t per model (default 1)")
    merge.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype (default: base's)"
    )
    merge.add_argument(
        "--vocab-mismatch",
        choices=["error", "base", "truncate"],
        default="error",
        help="embeddings of another vocabulary size: fail, keep the base's, or cut/pad to it",
    )
    merge.add_argument("--max-shard-size", default="5GB", help="output shard size (default: %(default)s)")
    merge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    merge.add_argument(
        "--device", default="cpu", help="where the arithmetic runs: cpu, cuda, auto (default: cpu)"
    )
    fields = add_config_arguments(merge, RTSVMConfig)
    merge.set_defaults(handler=_run_r_tsvm, config_fields=fields)
    methods = commands.add_parser("methods", help="list every merge method, its paper and its parameters")
    methods.set_defaults(handler=_list_methods)
    _configure_statistics(commands)
