"""HRP for ``transformers.Trainer`` and ``trl.SFTTrainer``: preheat on the batches the trainer would train on.

Build the trainer as usual with a LoRA (``SFTTrainer(..., peft_config=LoraConfig(...))``, or
``Trainer(model=get_peft_model(...))``), call :func:`hrp_initialize_trainer`, then ``trainer.train()``. The
preheat draws its batches from ``trainer.get_train_dataloader()`` (the trainer's tokenization, packing,
collator, completion-only masks and per-rank sharding) and its loss from ``trainer.training_step`` (the
trainer's own ``compute_loss`` and gradient-accumulation scaling), so it sees exactly what training will.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from peft import PeftModel
from torch import Tensor, nn
from transformers import Trainer

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora.config import HRPConfig
from paperpack.hrp_lora.preheat import preheat_and_initialize

__all__ = ["hrp_initialize_trainer"]

# Training metrics SFTTrainer's compute_loss accumulates (private to TRL); the preheat's are not kept.
_LOGGED_STATE = ("_metrics", "_total_train_tokens")


def _check_trainer(trainer: Any, adapter_name: str | None) -> tuple[PeftModel, str]:
    if not isinstance(trainer, Trainer):
        raise ConfigError(
            f"`trainer` must be a transformers.Trainer (or a TRL trainer), got {type(trainer).__name__}"
        )
    model = trainer.model
    if not isinstance(model, PeftModel):
        raise ConfigError(
            f"`trainer.model` must be a peft.PeftModel holding the LoRA to initialize, got "
            f"{type(model).__name__}: pass peft_config=LoraConfig(...) to SFTTrainer, or give Trainer "
            "get_peft_model(model, lora_config)"
        )
    if trainer.optimizer is not None or trainer.state.global_step > 0:
        raise ConfigError(
            "call hrp_initialize_trainer before trainer.train(): the trainer has started already"
        )
    name = adapter_name if adapter_name is not None else model.active_adapter
    if name not in model.peft_config:
        raise ConfigError(
            f"the trainer's model has no adapter {name!r}; it has {', '.join(model.peft_config)}"
        )
    return model, name


def hrp_initialize_trainer(
    trainer: Trainer,
    config: HRPConfig,
    *,
    adapter_name: str | None = None,
    progress: bool | None = None,
) -> PeftModel:
    """Initialize the trainer's LoRA adapter by HRP, preheating on the trainer's own batches and loss.

    Each preheat step takes ``gradient_accumulation_steps`` micro-batches of the trainer's train dataloader
    (started over when it runs out) through ``trainer.training_step``; the preheat's optimizer (``config``) is
    separate and discarded, and the trainer's own optimizer and schedule are created by ``trainer.train()`` as
    usual. Under ``accelerate launch`` every rank reads its own shard and the gradients are averaged.

    Args:
        trainer: a ``transformers.Trainer`` or TRL trainer whose model is a ``PeftModel``, not yet trained.
        config: the preheat and init settings.
        adapter_name: the adapter to initialize; default the active one.
        progress: show a progress bar; default unless ``args.disable_tqdm``, on the main process only.

    Returns:
        ``trainer.model``, its adapter initialized in place.

    Raises:
        ConfigError: when the trainer holds no PEFT model or has started training, and for a non-finite
            preheat loss (the adapter is then left as it was).

    Note:
        See the package README for a complete example: build the trainer, call
        ``hrp_initialize_trainer(trainer, HRPConfig())``, then ``trainer.train()``.
    """
    if not isinstance(config, HRPConfig):
        raise ConfigError(f"`config` must be an HRPConfig, got {type(config).__name__}")
    model, name = _check_trainer(trainer, adapter_name)
    accumulation = trainer.args.gradient_accumulation_steps
    loader = trainer.get_train_dataloader()
    iterator: Iterator[Any] = iter(loader)

    def step(module: nn.Module) -> Tensor:
        nonlocal iterator
        samples, items = trainer.get_batch_samples(iterator, accumulation, trainer.args.device)
        if not samples:
            iterator = iter(loader)
            samples, items = trainer.get_batch_samples(iterator, accumulation, trainer.args.device)
            if not samples:
                raise ConfigError("the trainer's train dataloader yields no batches")
        trainer.current_gradient_accumulation_steps = len(samples)  # as Trainer's loop sets it per step
        losses = [trainer.training_step(module, inputs, items) for inputs in samples]
        total: Tensor = sum(losses[1:], losses[0])
        return total

    logged = {key: copy.deepcopy(getattr(trainer, key)) for key in _LOGGED_STATE if hasattr(trainer, key)}
    if progress is None:
        progress = not trainer.args.disable_tqdm and trainer.is_world_process_zero()
    try:
        preheat_and_initialize(model, name, step, config, progress=progress)
    finally:
        for key, value in logged.items():
            setattr(trainer, key, value)
    return model
