r"""``paperpack sewa``: average saved checkpoints with SeWA or a baseline.

Example::

    paperpack sewa average --checkpoints out/checkpoint-800 out/checkpoint-900 out/checkpoint-1000 \\
        --strategy lawa --k 2 --output averaged
    paperpack sewa average --checkpoints out --last-n 10 --strategy sewa --k 3 --data train.jsonl \\
        --output averaged
"""

from __future__ import annotations

import argparse
import dataclasses

from paperpack.core.errors import ConfigError

__all__ = ["configure_parser"]

STRATEGY_CHOICES = ("last", "uniform", "lawa", "ema", "random", "sewa")
# SeWAConfig fields that have a flag; selection_data and vmap_loss concern training-time use only.
SEWA_FLAGS = (
    "iterations",
    "mc_samples",
    "temperature_start",
    "temperature_end",
    "temperature_schedule",
    "mask_lr",
    "mask_optimizer",
    "averaging",
    "projection",
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``average`` subcommand to ``paperpack sewa``."""
    from paperpack.sewa.config import SeWAConfig

    commands = parser.add_subparsers(dest="sewa_command", metavar="COMMAND", required=True)
    average = commands.add_parser(
        "average",
        help="average saved checkpoints with SeWA or a baseline",
        description="Average saved model folders (oldest first) by streaming tensors. Baselines: last, "
        "uniform (SWA over the window), lawa (latest k), ema, random (k at random). sewa learns which k to "
        "keep on the causal-LM loss of --data.",
    )
    average.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="DIR",
        help="model folders oldest first, or a Trainer output_dir holding checkpoint-<step> folders",
    )
    average.add_argument("--last-n", type=int, default=None, help="use only the last N checkpoints")
    average.add_argument("--strategy", required=True, choices=STRATEGY_CHOICES, help="how to average")
    average.add_argument(
        "--k", type=int, default=None, help="checkpoints kept (lawa, random, sewa; ema: decay 1-1/k)"
    )
    average.add_argument("--decay", type=float, default=None, help="ema decay β in [0, 1) (default 1 - 1/k)")
    average.add_argument("--seed", type=int, default=0, help="seed of random and of SeWA's noise and batches")
    average.add_argument("--output", required=True, metavar="DIR", help="the new model folder")
    average.add_argument("--max-shard-size", default="5GB", help="output shard size (default: %(default)s)")
    sewa = average.add_argument_group("sewa", "used with --strategy sewa")
    sewa.add_argument("--data", default=None, metavar="FILE.jsonl", help="JSON Lines with a 'text' field")
    sewa.add_argument("--max-length", type=int, default=256, help="tokens per text (default: %(default)s)")
    sewa.add_argument(
        "--batch-size", type=int, default=8, help="texts per Monte Carlo sample (default: %(default)s)"
    )
    sewa.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    sewa.add_argument(
        "--dtype",
        default="float32",
        help="dtype of the search: float32 (default; bf16 quantises the small differences between "
        "checkpoints), bf16, fp16 or auto (bf16 on capable CUDA devices). The output keeps the checkpoints' "
        "dtype",
    )
    fields = {field.name: field for field in dataclasses.fields(SeWAConfig)}
    for name in SEWA_FLAGS:
        field = fields[name]
        kind = {"int": int, "float": float}.get(str(field.type), str)
        sewa.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{field.metadata['help']} (default: {field.default})",
        )
    average.set_defaults(handler=_average)


def _average(args: argparse.Namespace) -> int:
    from paperpack.sewa.config import SeWAConfig
    from paperpack.sewa.merge import average_folders, find_checkpoints, sewa_folders

    checkpoints = find_checkpoints(args.checkpoints, args.last_n)
    if args.strategy != "sewa":
        if args.data is not None:
            raise ConfigError(f"--data is used by --strategy sewa only, got --strategy {args.strategy}")
        output = average_folders(
            checkpoints,
            args.output,
            args.strategy,
            k=args.k,
            decay=args.decay,
            seed=args.seed,
            max_shard_size=args.max_shard_size,
        )
        print(f"wrote {output}: {args.strategy} average of {len(checkpoints)} checkpoints")
        return 0
    if args.data is None:
        raise ConfigError("--strategy sewa needs --data FILE.jsonl (records with a 'text' field)")
    if args.k is None:
        raise ConfigError("--strategy sewa needs --k, the number of checkpoints to keep")
    if args.decay is not None:
        raise ConfigError("--decay applies to --strategy ema only")
    config = SeWAConfig(k=args.k, seed=args.seed, **{name: getattr(args, name) for name in SEWA_FLAGS})
    result = sewa_folders(
        checkpoints,
        args.output,
        args.data,
        config,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
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
