"""LoRA for training commands: the adapter the ``--lora-*`` flags describe, and adapter folders as models.

A training command that takes :func:`paperpack.core.commands.add_lora_arguments` trains a PEFT LoRA adapter
instead of every weight when ``--lora-r`` is given, and writes the adapter folder (``adapter_config.json`` and
``adapter_model.safetensors``) as PEFT does. Every command that loads a model through
:func:`paperpack.core.hf.load_model_and_tokenizer` reads such a folder as the model it stands for: its base
model (a local folder named in ``adapter_config.json``) with the adapter merged in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

__all__ = ["ADAPTER_CONFIG", "adapter_base", "lora_config", "merge_adapter", "wrap_lora"]

#: The file that makes a folder a PEFT adapter.
ADAPTER_CONFIG = "adapter_config.json"


def lora_config(args: argparse.Namespace) -> LoraConfig | None:
    """The ``LoraConfig`` that a command's ``--lora-*`` flags describe; None when ``--lora-r`` is not given.

    The values are checked by the flags themselves (:func:`paperpack.core.commands.add_lora_arguments`);
    this refuses ``--lora-alpha``, ``--lora-dropout`` or ``--lora-target-modules`` without ``--lora-r``.
    α defaults to 2r (TRL's ``lora_alpha`` 32 for ``lora_r`` 16), the target modules to PEFT's choice for
    the architecture.

    Raises:
        ConfigError: for a LoRA flag given without ``--lora-r``.
    """
    from peft import LoraConfig, TaskType

    rank = getattr(args, "lora_r", None)
    if rank is None:
        given = [
            flag
            for flag, name in (
                ("--lora-alpha", "lora_alpha"),
                ("--lora-dropout", "lora_dropout"),
                ("--lora-target-modules", "lora_target_modules"),
            )
            if getattr(args, name, None) is not None
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} needs --lora-r (the adapter's rank), which was not given")
        return None
    alpha = args.lora_alpha if args.lora_alpha is not None else 2 * rank
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=args.lora_dropout or 0.0,
        target_modules=args.lora_target_modules,
        task_type=TaskType.CAUSAL_LM,
    )


def wrap_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """``peft.get_peft_model(model, config)``, with a ``ConfigError`` naming the modules to choose from.

    Raises:
        ConfigError: when ``config.target_modules`` names no module of the model, or PEFT has no default for
            the architecture.
    """
    from peft import get_peft_model

    try:
        return get_peft_model(model, config)
    except ValueError as error:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)}
        )
        wanted = config.target_modules
        shown = "PEFT's default" if wanted is None else ", ".join(sorted(wanted))
        raise ConfigError(
            f"--lora-target-modules ({shown}) fits no module of this model ({error}); its linear layers are "
            f"named {', '.join(linear)}"
        ) from None


def _is_linear(module: nn.Module) -> bool:
    # GPT-2's projections are transformers' Conv1D, which PEFT adapts as it does nn.Linear.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def adapter_base(folder: Path) -> Path:
    """The local base model folder of the PEFT adapter in ``folder``.

    A relative ``base_model_name_or_path`` is read relative to the working folder first (as PEFT records the
    path it was given), then to the adapter folder.

    Raises:
        CheckpointError: for an unreadable ``adapter_config.json``, or adapter weights that are not
            safetensors.
        CheckpointNotFoundError: when the base is not a local model folder.
    """
    try:
        config: Any = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{str(folder)!r}: cannot read {ADAPTER_CONFIG}: {error}") from None
    if not (folder / "adapter_model.safetensors").is_file():
        raise CheckpointError(
            f"{str(folder)!r} is a PEFT adapter without adapter_model.safetensors; paperpack reads adapter "
            "weights from safetensors only (save it with safe_serialization=True)"
        )
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise CheckpointNotFoundError(
            f"{str(folder)!r} is a PEFT adapter whose {ADAPTER_CONFIG} names no base model "
            "(base_model_name_or_path)"
        )
    for candidate in (Path(base), folder / base):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointNotFoundError(
        f"{str(folder)!r} is a PEFT adapter on {base!r}, which is not a local model folder (no config.json); "
        f"set base_model_name_or_path in its {ADAPTER_CONFIG} to the base model's folder"
    )


def merge_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """``model`` with the adapter in ``folder`` merged into its weights (a plain transformers model)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    merged: nn.Module = peft_model.merge_and_unload()
    return merged
