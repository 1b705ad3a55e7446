r"""``paperpack sewa``: average checkpoints with SeWA or a baseline.

Example::

    paperpack sewa average --checkpoints out/checkpoint-800 out/checkpoint-900 out/checkpoint-1000 \\
        --strategy lawa --k 2 --output averaged
    paperpack sewa average --checkpoints out --last-n 10 --strategy sewa --k 3 --data train.jsonl \\
        --output averaged

The flags follow paperpack's convention (``--data``, ``--output``, ``--overwrite``, ``--device``, ``--dtype``,
``--seed``, ``--max-length``, ``--batch-size``, ``--progress``, ``--config``); SeWA's hyperparameters come
from ``SeWAConfig``, one flag per field.
"""

from __future__ import annotations

import argparse
from typing import Literal

from paperpack.core.arguments import add_config_arguments, add_flag, config_overrides
from paperpack.core.commands import add_shared_arguments
from paperpack.core.errors import ConfigError

__all__ = ["configure_parser"]

StrategyChoice = Literal["last", "uniform", "lawa", "ema", "random", "sewa"]
# SeWAConfig fields without a flag: k and seed are shared with the baselines (--k, --seed); selection_data
# and vmap_loss concern training-time use only.
NOT_FLAGS = ("k", "seed", "selection_data", "vmap_loss")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``average`` subcommand to ``paperpack sewa``."""
    from paperpack.sewa.config import SeWAConfig

    commands = parser.add_subparsers(dest="sewa_command", metavar="COMMAND")
    average = commands.add_parser(
        "average",
        help="average checkpoints with SeWA or a baseline",
        description="Average checkpoints (model folders, oldest first) by streaming tensors. Baselines: "
        "last, uniform (SWA over the window), lawa (latest k), ema, random (k at random). sewa learns which "
        "k to keep on the causal-LM loss of --data.",
    )
    add_flag(
        average,
        "checkpoints",
        list[str],
        required=True,
        metavar="DIR",
        help="checkpoints oldest first: model folders, or a training output (its checkpoint-N folders in "
        "step order, then the final model at its top when that differs from the last checkpoint)",
    )
    add_flag(average, "last_n", int, metavar="N", help="use only the last N checkpoints")
    add_flag(average, "strategy", StrategyChoice, required=True, help="how to average")
    add_flag(average, "k", int, metavar="N", help="checkpoints kept (lawa, random, sewa; ema: decay 1 - 1/k)")
    add_flag(average, "decay", float, help="ema's decay β in [0, 1) (default 1 - 1/k)")
    add_flag(average, "max_shard_size", str, default="5GB", metavar="SIZE", help="bytes per output shard")
    add_shared_arguments(
        average,
        "output",
        "overwrite",
        "seed",
        "data",
        "max_length",
        "batch_size",
        "device",
        "dtype",
        "progress",
        "config",
        required=("output",),
        help={
            "seed": "seed of random, and of SeWA's noise and minibatches",
            "data": "sewa: JSON Lines with a 'text' field, the loss the mask is fitted on",
            "batch_size": "sewa: texts per Monte Carlo sample",
            "dtype": "sewa: the dtype of the search: float32 (bf16 quantises the small differences between "
            "checkpoints), bfloat16, float16, or auto (bfloat16 on a capable CUDA device); the output keeps "
            "the checkpoints' dtype",
        },
        defaults={"dtype": "float32"},
    )
    names = add_config_arguments(average, SeWAConfig, exclude=NOT_FLAGS, title="sewa (with --strategy sewa)")
    average.set_defaults(handler=_average, sewa_fields=names)


def _average(args: argparse.Namespace) -> int:
    from paperpack.core.files import check_output
    from paperpack.sewa.checkpoints import (
        AVERAGE_COMMAND,
        find_checkpoints,
        write_average,
        write_sewa_average,
    )
    from paperpack.sewa.config import SeWAConfig

    checkpoints = find_checkpoints(args.checkpoints, args.last_n)
    sewa_flags = sorted(config_overrides(args, args.sewa_fields))
    if args.strategy != "sewa":
        for name, value in (("data", args.data), *((name, True) for name in sewa_flags)):
            if value is not None:
                raise ConfigError(f"`{name}` is used by --strategy sewa only, got --strategy {args.strategy}")
    else:
        if args.data is None:
            raise ConfigError("--strategy sewa needs `data`, a JSON Lines file with a 'text' field")
        if args.k is None:
            raise ConfigError("--strategy sewa needs `k`, the number of checkpoints to keep")
        if args.decay is not None:
            raise ConfigError("`decay` applies to --strategy ema only")
        config = SeWAConfig(k=args.k, seed=args.seed, **config_overrides(args, args.sewa_fields))
    check_output(args.output, command=AVERAGE_COMMAND, overwrite=args.overwrite, inputs=checkpoints)
    if args.strategy != "sewa":
        output = write_average(
            checkpoints,
            args.output,
            args.strategy,
            k=args.k,
            decay=args.decay,
            seed=args.seed,
            max_shard_size=args.max_shard_size,
            progress=args.progress,
            overwrite=args.overwrite,
        )
        print(f"wrote {output}: {args.strategy} average of {len(checkpoints)} checkpoints")
        return 0
    result = write_sewa_average(
        checkpoints,
        args.output,
        args.data,
        config,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.output}: mean of {len(result.indices)} of {len(checkpoints)} checkpoints "
        "selected by SeWA"
    )
    if result.tie_broken:
        print(f"  {result.tie_broken} of them picked by the tie rule: s did not single them out")
    for index, (path, probability) in enumerate(zip(checkpoints, result.probabilities.tolist(), strict=True)):
        mark = "*" if index in result.indices else " "
        print(f"  {mark} s={probability:.3f}  {path}")
    return 0
