"""Phase 1 of HRP and the whole sequence on a PEFT model: preheat a rank-R adapter, initialize, clean up.

The sequence is shared by :func:`~paperpack.hrp_lora.hrp_initialize` (batches and a loss function) and
:func:`~paperpack.hrp_lora.hrp_initialize_trainer` (a Trainer's own batches and loss): both hand over a
``step`` callable that runs the forward and backward passes of one optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from paperpack.core.distributed import is_distributed
from paperpack.core.errors import ConfigError
from paperpack.hrp_lora.adapters import (
    PREHEAT_ADAPTER,
    adapter_parameters,
    lora_layers,
    preheat_lora_config,
    set_preheat_scaling,
)
from paperpack.hrp_lora.config import HRPConfig
from paperpack.hrp_lora.distributed import any_rank, average_gradients, broadcast_tensors
from paperpack.hrp_lora.extraction import initialize_from_adapter

__all__ = ["StepFn", "check_preheat_rank", "preheat_and_initialize", "run_preheat", "seeded"]

logger = logging.getLogger(__name__)

#: Forward and backward passes of one preheat step (gradients accumulated into ``.grad``); returns the loss.
StepFn = Callable[[nn.Module], Tensor]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's generator seeded by ``seed``; the caller's random state is restored."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_preheat_rank(ranks: Sequence[int], config: HRPConfig) -> None:
    """Refuse a preheat rank below a target rank (the preheat must be the higher rank).

    Raises:
        ConfigError: naming ``preheat_rank`` and the largest rank r.
    """
    largest = max(ranks)
    if config.preheat_rank is not None and config.preheat_rank < largest:
        raise ConfigError(
            f"`preheat_rank` ({config.preheat_rank}) must be >= the adapter's rank r ({largest}, "
            "rank_pattern included): HRP preheats at a higher rank than it trains"
        )


def run_preheat(
    model: nn.Module, parameters: Sequence[nn.Parameter], step: StepFn, config: HRPConfig, *, progress: bool
) -> list[float]:
    """Train ``parameters`` for ``config.preheat_steps`` optimizer steps with a fresh optimizer; the losses.

    Gradients are averaged across ranks in a distributed run. The optimizer is discarded afterwards.

    Raises:
        ConfigError: when a loss is not finite (on any rank), before that step is applied.
    """
    if config.preheat_optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(parameters, lr=config.preheat_lr)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.preheat_lr, weight_decay=0.0)
    device = parameters[0].device
    losses: list[float] = []
    steps = config.preheat_steps
    bar = tqdm(range(steps), desc="HRP preheat", unit="step", disable=not progress, leave=False)
    for index in bar:
        value = float(step(model))
        if any_rank(not math.isfinite(value), device):
            raise ConfigError(
                f"the preheat loss is not finite ({value} on this rank) at step {index + 1} of {steps}; "
                f"lower preheat_lr ({config.preheat_lr}) or check the batches and loss_fn"
            )
        average_gradients(parameters)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4g}")
    logger.info("HRP preheat: %d steps, loss %.4g -> %.4g", steps, losses[0], losses[-1])
    return losses


def preheat_and_initialize(
    model: PeftModel, adapter_name: str, step: StepFn, config: HRPConfig, *, progress: bool = False
) -> list[float]:
    """Run HRP on a ``PeftModel`` holding the rank-r LoRA ``adapter_name``; its factors are overwritten.

    Adds the rank-R adapter ``hrp_preheat`` (PEFT's standard init, seeded by ``config.seed``), trains it alone
    for ``config.preheat_steps`` steps, initializes ``adapter_name`` from its singular directions, deletes it,
    and restores the active adapter, the training mode and every parameter's ``requires_grad``. On failure
    the temporary adapter is deleted and ``adapter_name`` is left as it was. In a distributed run every rank
    must call this; the result is broadcast from rank 0.

    Returns:
        The preheat losses, one per step.
    """
    if PREHEAT_ADAPTER in model.peft_config:
        raise ConfigError(
            f"the model already holds an adapter named {PREHEAT_ADAPTER!r}, HRP's temporary one"
        )
    targets = lora_layers(model, adapter_name)
    check_preheat_rank([int(layer.r[adapter_name]) for layer in targets.values()], config)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    active, was_training = model.active_adapter, model.training
    device = next(model.parameters()).device
    with seeded(config.seed, device):
        target_config = model.peft_config[adapter_name]
        if not isinstance(target_config, LoraConfig):
            raise ConfigError(f"adapter {adapter_name!r} is a {type(target_config).__name__}, not a LoRA")
        model.add_adapter(PREHEAT_ADAPTER, preheat_lora_config(target_config, config))
        try:
            set_preheat_scaling(model, adapter_name, config)
            model.set_adapter(PREHEAT_ADAPTER)
            parameters = [parameter for _, parameter in adapter_parameters(model, PREHEAT_ADAPTER)]
            chosen = {id(parameter) for parameter in parameters}
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in chosen)
            model.train()
            losses = run_preheat(model, parameters, step, config, progress=progress)
            initialize_from_adapter(model, PREHEAT_ADAPTER, adapter_name, config)
        finally:
            model.set_adapter(active)
            model.delete_adapter(PREHEAT_ADAPTER)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(trainable[name])
            model.train(was_training)
    if is_distributed():
        broadcast_tensors([parameter for _, parameter in adapter_parameters(model, adapter_name)])
    return losses
