"""Training arguments that work on the machine at hand, and loading model folders for the CLIs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from paperpack.core.checkpoints import LazyStateDict
from paperpack.core.device import resolve_device, resolve_dtype
from paperpack.core.errors import CheckpointNotFoundError

__all__ = ["load_model_and_tokenizer", "machine_defaults", "training_args"]

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

    Example:
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

    Raises:
        CheckpointNotFoundError: when the folder is missing or lacks ``config.json``.
        CheckpointError: when its weights are pickle files.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(f"{str(path)!r} is not a model folder (no config.json)")
    LazyStateDict(folder)  # refuses pickle-only folders with instructions, reads headers only
    where = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=resolve_dtype(dtype, where),
        device_map={"": str(where)},
        local_files_only=True,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer
