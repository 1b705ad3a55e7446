r"""``paperpack tezo``: zeroth-order fine-tuning of a causal LM from the command line.

Example::

    paperpack tezo finetune ./my-model --data train.jsonl --method tezo_adam --rank 8 --lr 1e-5 \\
        --steps 2000 --batch-size 16 --output ./tezo-run

The output folder receives the Trainer checkpoints (``checkpoints/checkpoint-<step>``, each with the ZO state)
and, at the end, the fine-tuned model in ``model/`` (written to a temporary folder and renamed into place).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from paperpack.core.errors import ConfigError
from paperpack.tezo.methods import METHODS, ONE_DIM_MODES

__all__ = ["configure_parser"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``finetune`` subcommand to ``paperpack tezo``."""
    commands = parser.add_subparsers(dest="tezo_command", metavar="COMMAND", required=True)
    tune = commands.add_parser(
        "finetune",
        help="fine-tune a causal LM with TeZO, MeZO or LOZO (forward passes only)",
        description="Zeroth-order fine-tuning: two forward passes per step, no backward, optimizer state of "
        "r-vectors per matrix for TeZO. Data: JSON Lines with a 'text' field (causal-LM loss on all tokens).",
    )
    tune.add_argument(
        "model", metavar="MODEL_DIR", help="a local model folder (safetensors, config, tokenizer)"
    )
    tune.add_argument(
        "--data", required=True, metavar="FILE.jsonl", help="training texts, one {'text': ...} a line"
    )
    tune.add_argument(
        "--output", required=True, metavar="DIR", help="new folder for checkpoints and the model"
    )
    tune.add_argument("--method", default="tezo_adam", choices=METHODS, help="default: %(default)s")
    tune.add_argument("--rank", type=int, default=8, help="r of TeZO / LOZO (default: %(default)s)")
    tune.add_argument("--eps", type=float, default=1e-3, help="perturbation scale ρ (default: %(default)s)")
    tune.add_argument("--lr", type=float, default=1e-5, help="learning rate η (default: %(default)s)")
    tune.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: %(default)s)")
    tune.add_argument(
        "--batch-size", type=int, default=16, help="texts per step and device (default: %(default)s)"
    )
    tune.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per step")
    tune.add_argument("--max-length", type=int, default=256, help="tokens per text (default: %(default)s)")
    tune.add_argument("--scheduler", default="constant", help="HF lr_scheduler_type (default: %(default)s)")
    tune.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay λ")
    tune.add_argument("--beta1", type=float, default=0.9, help="β1 (default: %(default)s)")
    tune.add_argument("--beta2", type=float, default=0.999, help="β2 (default: %(default)s)")
    tune.add_argument("--one-sided", action="store_true", help="forward difference (ℓ(θ+ρZ) − ℓ(θ))/ρ")
    tune.add_argument(
        "--no-cache-factors", action="store_true", help="regenerate U, V from seeds instead of storing"
    )
    tune.add_argument("--scale-by-rank", action="store_true", help="τ ~ N(0, I/r): an unbiased estimate")
    tune.add_argument(
        "--one-dim", default="dense", choices=ONE_DIM_MODES, help="1-D parameters (biases, norms)"
    )
    tune.add_argument("--lozo-interval", type=int, default=100, help="ν of LOZO (default: %(default)s)")
    tune.add_argument("--eval-data", default=None, metavar="FILE.jsonl", help="texts to evaluate on")
    tune.add_argument(
        "--eval-steps", type=int, default=None, help="evaluate every N steps (with --eval-data)"
    )
    tune.add_argument(
        "--save-steps", type=int, default=500, help="checkpoint every N steps (default: %(default)s)"
    )
    tune.add_argument(
        "--logging-steps", type=int, default=10, help="log every N steps (default: %(default)s)"
    )
    tune.add_argument("--resume", default=None, metavar="CHECKPOINT",
                      help="continue from a checkpoint folder of this run, or 'last'")  # fmt: skip
    tune.add_argument("--seed", type=int, default=0, help="seed of data order and of every ZO draw")
    tune.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    tune.add_argument("--dtype", default="auto", help="float32, bf16, fp16 or auto (default: %(default)s)")
    tune.set_defaults(handler=_finetune)


def _texts(path: str, tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    from paperpack.core.data import read_jsonl

    records = read_jsonl(path, required=("text",))
    return [
        {"input_ids": tokenizer(r["text"], truncation=True, max_length=max_length)["input_ids"]}
        for r in records
    ]


def _check_output(args: argparse.Namespace) -> Path:
    from paperpack.core.checkpoints import check_output_path

    output = Path(args.output)
    check_output_path(output, [args.model])
    if args.resume is None and output.exists() and any(output.iterdir()):
        raise ConfigError(
            f"--output {str(output)!r} exists and is not empty; choose a new folder or pass --resume"
        )
    if args.eval_steps is not None and args.eval_data is None:
        raise ConfigError("--eval-steps needs --eval-data FILE.jsonl")
    return output


def _resume_point(args: argparse.Namespace, checkpoints: Path) -> str | None:
    if args.resume is None:
        return None
    if args.resume != "last":
        if not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume!r} is not a checkpoint folder")
        return str(args.resume)
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is None:
        raise ConfigError(f"--resume last found no checkpoint-<step> folder in {str(checkpoints)!r}")
    return str(last)


def _finetune(args: argparse.Namespace) -> int:
    output = _check_output(args)
    checkpoints = output / "checkpoints"
    resume = _resume_point(args, checkpoints)

    from transformers import DataCollatorForLanguageModeling

    from paperpack.core.device import resolve_device
    from paperpack.core.files import atomic_folder
    from paperpack.core.hf import load_model_and_tokenizer, training_args
    from paperpack.tezo.config import ZOConfig
    from paperpack.tezo.optim import zo_state_bytes
    from paperpack.tezo.trainer import ZOTrainer

    device = resolve_device(args.device)
    config = training_args(
        checkpoints,
        cls=ZOConfig,
        zo_method=args.method,
        zo_rank=args.rank,
        zo_eps=args.eps,
        zo_cache_factors=not args.no_cache_factors,
        zo_scale_by_rank=args.scale_by_rank,
        zo_estimate="one_sided" if args.one_sided else "two_sided",
        zo_one_dim=args.one_dim,
        zo_lozo_interval=args.lozo_interval,
        learning_rate=args.lr,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lr_scheduler_type=args.scheduler,
        weight_decay=args.weight_decay,
        adam_beta1=args.beta1,
        adam_beta2=args.beta2,
        seed=args.seed,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps,
        use_cpu=device.type == "cpu",
        bf16=False,
    )
    model, tokenizer = load_model_and_tokenizer(args.model, device=device, dtype=args.dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = _texts(args.data, tokenizer, args.max_length)
    evaluation = _texts(args.eval_data, tokenizer, args.max_length) if args.eval_data else None
    trainer = ZOTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    result = trainer.train(resume_from_checkpoint=resume)
    summary: dict[str, Any] = {
        "method": args.method,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "zo_state_bytes": zo_state_bytes(trainer),
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    if evaluation is not None:
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]
    final = output / "model"
    with atomic_folder(final, overwrite=True) as staging:
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(staging)
        (staging / "tezo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {final}: {args.method}, {result.global_step} steps, train loss {result.training_loss:.4f}, "
          f"ZO state {summary['zo_state_bytes']} bytes")  # fmt: skip
    return 0
