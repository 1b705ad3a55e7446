"""Training arguments that work on this machine, loading model folders, and what training commands write.

A training command (``paperpack <name> finetune`` and the like) writes one layout, the same for every package,
so that the output of one command is the input of another as it is: the final model at the top of ``--output``
(as ``Trainer.save_model`` writes it, with the tokenizer) and the Trainer's ``checkpoint-N`` folders beside
it.
The arguments are written as ``training_args.json``; transformers' pickled ``training_args.bin`` is never
left behind (paperpack refuses to read pickles).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from paperpack.core.arguments import config_overrides
from paperpack.core.checkpoints import LazyStateDict
from paperpack.core.device import resolve_device, resolve_dtype
from paperpack.core.errors import CheckpointNotFoundError
from paperpack.core.files import atomic_write_text
from paperpack.core.validation import check_number

__all__ = [
    "ARGUMENTS_FILE",
    "check_training_args",
    "command_training_args",
    "load_model_and_tokenizer",
    "machine_defaults",
    "save_trained_model",
    "training_args",
    "write_arguments_json",
]

#: The file that holds a run's training arguments, as JSON, in the output and in every checkpoint.
ARGUMENTS_FILE = "training_args.json"
_PICKLED_ARGUMENTS = "training_args.bin"

ArgsT = TypeVar("ArgsT", bound=TrainingArguments)


def machine_defaults() -> dict[str, Any]:
    """The ``TrainingArguments`` fields that depend on the machine.

    bf16 only on a CUDA device that supports it (TRL configs default to bf16, which fails on a CPU),
    ``use_cpu`` without CUDA, no pinned memory on the CPU, and no experiment trackers.
    """
    cuda = torch.cuda.is_available()
    return {
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "fp16": False,
        "use_cpu": not cuda,
        "dataloader_pin_memory": cuda,
        "report_to": "none",
    }


@overload
def training_args(output_dir: str | os.PathLike[str], *, cls: type[ArgsT], **kwargs: Any) -> ArgsT: ...


@overload
def training_args(output_dir: str | os.PathLike[str], **kwargs: Any) -> TrainingArguments: ...


def training_args(
    output_dir: str | os.PathLike[str], *, cls: type[TrainingArguments] = TrainingArguments, **kwargs: Any
) -> TrainingArguments:
    """Build ``TrainingArguments`` (or any subclass, e.g. ``trl.SFTConfig``) that run on this machine.

    Args:
        output_dir: where the Trainer writes checkpoints.
        cls: the arguments class.
        **kwargs: any field; these override :func:`machine_defaults`.

    Examples:
        >>> from paperpack.core.hf import training_args
        >>> args = training_args("out", max_steps=2, learning_rate=1e-3)
        >>> args.report_to, args.max_steps
        ([], 2)
    """
    settings = machine_defaults()
    settings.update(kwargs)
    return cls(output_dir=str(output_dir), **settings)


def load_model_and_tokenizer(
    path: str | os.PathLike[str], *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local model folder (safetensors only, never the network).

    The folder may also be a PEFT adapter (what a training command writes with ``--lora-r``): its base model,
    a local folder named in ``adapter_config.json``, is loaded and the adapter merged into it; the tokenizer
    is the adapter folder's when it holds one, else the base's.

    Raises:
        CheckpointNotFoundError: when the folder is missing or lacks ``config.json`` (and is no adapter), or
            an adapter's base is not a local model folder.
        CheckpointError: when its weights are pickle files.
    """
    from paperpack.core.hf.lora import ADAPTER_CONFIG, adapter_base, merge_adapter

    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / ADAPTER_CONFIG).is_file():
        model, tokenizer = load_model_and_tokenizer(adapter_base(folder), device=device, dtype=dtype)
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cast(PreTrainedModel, merge_adapter(model, folder)), tokenizer
    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(f"{str(path)!r} is not a model folder (no config.json)")
    LazyStateDict(folder)  # refuses pickle-only folders with instructions, reads headers only
    where = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        folder.resolve(),  # recorded as the model's name_or_path: an adapter trained on it finds it anywhere
        dtype=resolve_dtype(dtype, where),
        device_map={"": str(where)},
        local_files_only=True,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def check_training_args(args: TrainingArguments) -> None:
    """Refuse training arguments whose counts or rates do not mean what they say.

    transformers accepts ``max_steps=0`` (it then trains one step), ``num_train_epochs=0`` (no step: an
    untrained model is saved) and a NaN learning rate; a command must refuse them before any side effect.

    Raises:
        ConfigError: naming the field (the ``paperpack`` command rewrites it as the flag the user typed).

    Examples:
        >>> from paperpack.core.hf import check_training_args, training_args
        >>> check_training_args(training_args("out", max_steps=0))
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `max_steps` must be >= 1 (or -1: train `num_train_epochs`), got 0
    """
    from paperpack.core.errors import ConfigError

    if args.max_steps != -1:
        if isinstance(args.max_steps, bool) or not isinstance(args.max_steps, int) or args.max_steps < 1:
            raise ConfigError(
                f"`max_steps` must be >= 1 (or -1: train `num_train_epochs`), got {args.max_steps!r}"
            )
    else:
        check_number("num_train_epochs", args.num_train_epochs, greater_than=0)
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_number(name, getattr(args, name), minimum=1, integer=True)
    check_number("learning_rate", args.learning_rate, minimum=0)
    check_number("weight_decay", args.weight_decay, minimum=0)
    check_number("adam_beta1", args.adam_beta1, minimum=0, less_than=1)
    check_number("adam_beta2", args.adam_beta2, minimum=0, less_than=1)
    check_number("adam_epsilon", args.adam_epsilon, greater_than=0)
    check_number("max_grad_norm", args.max_grad_norm, minimum=0)
    check_number("warmup_steps", args.warmup_steps, minimum=0)
    check_number("label_smoothing_factor", args.label_smoothing_factor, minimum=0, less_than=1)
    check_number("seed", args.seed, minimum=0, integer=True)
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, name, None)
        if value is not None:
            check_number(name, value, greater_than=0)


def command_training_args(
    args: argparse.Namespace,
    names: Iterable[str],
    *,
    cls: type[ArgsT],
    output: str | os.PathLike[str],
    **fixed: Any,
) -> ArgsT:
    """Build a training command's arguments from its parsed flags, checked before anything is written.

    The shared flags set what they stand for: ``--device`` (``use_cpu``), ``--progress`` (``disable_tqdm``);
    the fields among ``names`` the user gave override :func:`machine_defaults`; ``fixed`` (what the command
    decides itself, e.g. ``save_strategy``) is applied first and may be overridden by a flag of the same name.

    Args:
        args: the parsed command line.
        names: what :func:`paperpack.core.commands.add_training_arguments` returned.
        cls: the arguments class.
        output: the output folder (``output_dir``); checkpoints go to ``<output>/checkpoint-N``.
        **fixed: fields the command sets.

    Raises:
        ConfigError: for a value transformers accepts but that does not mean what it says
            (:func:`check_training_args`), or a device this machine lacks.

    Examples:
        >>> import argparse
        >>> from transformers import TrainingArguments
        >>> from paperpack.core.hf import command_training_args
        >>> parsed = argparse.Namespace(device="cpu", progress=False, max_steps=3)
        >>> built = command_training_args(parsed, ["max_steps"], cls=TrainingArguments, output="out")
        >>> built.max_steps, built.use_cpu, built.disable_tqdm
        (3, True, True)
    """
    settings = dict(fixed)
    if getattr(args, "device", None) is not None:
        settings["use_cpu"] = resolve_device(args.device).type == "cpu"
    if getattr(args, "progress", None) is not None:
        settings["disable_tqdm"] = not args.progress
    settings.update(config_overrides(args, names))
    built = training_args(output, cls=cls, **settings)
    check_training_args(built)
    return built


def write_arguments_json(args: TrainingArguments, folder: str | os.PathLike[str]) -> Path:
    """Write ``args`` as :data:`ARGUMENTS_FILE` in ``folder`` and remove transformers' pickled copy there."""
    target = Path(folder)
    (target / _PICKLED_ARGUMENTS).unlink(missing_ok=True)
    return atomic_write_text(target / ARGUMENTS_FILE, args.to_json_string())


def save_trained_model(
    trainer: Trainer, output: str | os.PathLike[str], *, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Write the trained model at the top of ``output`` the way every training command does.

    ``trainer.save_model`` writes the weights (safetensors) and config; the tokenizer is saved beside them
    (when given or held by the Trainer); the arguments are written as :data:`ARGUMENTS_FILE`, never as a
    pickle. Only the main process writes.

    Returns:
        The output folder.
    """
    folder = Path(output)
    trainer.save_model(str(folder))
    if trainer.args.should_save:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        write_arguments_json(trainer.args, folder)
    return folder
