"""The ``paperpack merge`` and ``paperpack r-tsvm`` commands.

``paperpack merge CONFIG.yaml --output DIR`` runs any registered method from a mergekit-style recipe;
``paperpack r-tsvm merge --base B --models M1 M2 M3 --output DIR [--kappa ...]`` runs the paper's method with
its parameters as flags, and ``paperpack r-tsvm methods`` lists every method and its parameters. Heavy imports
happen inside the handlers so that ``paperpack --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses

from paperpack.core.arguments import add_config_arguments, config_overrides

__all__ = ["configure_merge_parser", "configure_parser"]


def _run_recipe(args: argparse.Namespace) -> int:
    from paperpack.r_tsvm.recipe import MergeConfig
    from paperpack.r_tsvm.streaming import merge_checkpoints

    config = MergeConfig.from_yaml(args.config)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0
    output = merge_checkpoints(config, args.output, progress=not args.no_progress, device=args.device)
    print(f"merged {len(config.models)} model(s) with {config.merge_method} into {output}")
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
            ModelSpec(model=path, weight=weight) for path, weight in zip(args.models, weights, strict=True)
        ],
        parameters=config_overrides(args, args.config_fields),
        dtype=args.dtype,
        vocab_mismatch=args.vocab_mismatch,
        max_shard_size=args.max_shard_size,
    )
    output = merge_checkpoints(config, args.output, progress=not args.no_progress, device=args.device)
    print(
        f"merged {len(config.models)} model(s) with R-TSVM into {output} (per-layer report: "
        "merge_report.json)"
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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Set up ``paperpack r-tsvm merge ...`` and ``paperpack r-tsvm methods``."""
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
