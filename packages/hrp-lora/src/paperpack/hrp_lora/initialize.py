"""``hrp_initialize``: wrap a model with a LoRA adapter initialized by High-Rank Preheating.

A separate preprocessing step with a small public function, in the shape of PEFT's data-dependent inits
(``preprocess_loraga``, EVA): the caller gets back an ordinary ``PeftModel`` and trains it as usual.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import Tensor, nn

from paperpack.core.errors import ConfigError
from paperpack.hrp_lora.adapters import PREHEAT_ADAPTER, describe_targets, unwrap_empty_layers
from paperpack.hrp_lora.config import HRPConfig
from paperpack.hrp_lora.preheat import check_preheat_rank, preheat_and_initialize, seeded

__all__ = ["LossFn", "hrp_initialize"]

#: ``loss_fn(model, batch)`` -> a scalar tensor.
LossFn = Callable[[nn.Module, Any], Tensor]


class _BatchCycle:
    """The batches in order, started over when they run out: re-iterated if they can be, else replayed.

    The first batch is read at construction, so empty input is refused before the model is touched. A
    one-shot iterator is recorded during its first pass (at most as many batches as the preheat takes).
    """

    def __init__(self, batches: Iterable[Any]) -> None:
        iterator = iter(batches)
        self._source = batches
        self._one_shot = iterator is batches
        self._seen: list[Any] = []
        self._recording = True
        first = next(iterator, _EMPTY)
        if first is _EMPTY:
            raise ConfigError("`batches` is empty: the preheat needs at least one batch")
        self._iterator: Iterator[Any] = itertools.chain([first], iterator)

    def __next__(self) -> Any:
        batch = next(self._iterator, _EMPTY)
        if batch is _EMPTY:
            self._recording = False
            self._iterator = iter(self._seen if self._one_shot else self._source)
            batch = next(self._iterator, _EMPTY)
            if batch is _EMPTY:
                raise ConfigError("`batches` was empty when iterated again: pass a list or a DataLoader")
        if self._recording and self._one_shot:
            self._seen.append(batch)
        return batch


_EMPTY = object()


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


def _default_loss(model: nn.Module, batch: Any) -> Tensor:
    if not isinstance(batch, Mapping):
        raise ConfigError(
            f"without `loss_fn`, each batch must be a mapping of model inputs (model(**batch).loss), got "
            f"{type(batch).__name__}; pass loss_fn(model, batch)"
        )
    outputs = model(**_to_device(batch, next(model.parameters()).device))
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ConfigError("model(**batch) returned no loss: put `labels` in the batches or pass loss_fn")
    return loss  # type: ignore[no-any-return]


def _step_fn(batches: _BatchCycle, loss_fn: LossFn) -> Callable[[nn.Module], Tensor]:
    def step(model: nn.Module) -> Tensor:
        loss = loss_fn(model, next(batches))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ConfigError(f"`loss_fn` must return a scalar tensor, got {shape}")
        if torch.isfinite(loss):
            loss.reshape(()).backward()
        return loss.detach().reshape(())

    return step


def _holds_adapter(model: nn.Module, adapter_name: str) -> bool:
    if isinstance(model, PeftModel):
        return adapter_name in model.peft_config
    return any(
        isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {})
        for module in model.modules()
    )


def _check_arguments(model: Any, lora_config: Any, config: Any, loss_fn: Any, adapter_name: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(lora_config, LoraConfig):
        raise ConfigError(f"`lora_config` must be a peft.LoraConfig, got {type(lora_config).__name__}")
    if not isinstance(config, HRPConfig):
        raise ConfigError(f"`config` must be an HRPConfig, got {type(config).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(
            f"`loss_fn` must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}"
        )
    if not isinstance(adapter_name, str) or not adapter_name or adapter_name == PREHEAT_ADAPTER:
        raise ConfigError(
            f"`adapter_name` must be a non-empty string other than {PREHEAT_ADAPTER!r}, got {adapter_name!r}"
        )
    if lora_config.init_lora_weights is not True:
        raise ConfigError(
            "`lora_config.init_lora_weights` must be True (the default): HRP sets the adapter's initial "
            f"weights itself and leaves the base weights alone, got {lora_config.init_lora_weights!r}"
        )
    if lora_config.layer_replication:
        raise ConfigError("`lora_config.layer_replication` is not supported: it changes the base model")
    check_preheat_rank([lora_config.r, *(lora_config.rank_pattern or {}).values()], config)
    if _holds_adapter(model, adapter_name):
        raise ConfigError(
            f"the model already holds an adapter named {adapter_name!r}; pass another adapter_name, or "
            "call hrp_initialize on the model before wrapping it"
        )


def _check_targets(model: nn.Module, lora_config: LoraConfig) -> None:
    targets = lora_config.target_modules
    if targets is None or targets == "all-linear" or lora_config.target_parameters:
        return  # PEFT resolves these from the architecture; it raises if nothing is found
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not any(check_target_module_exists(lora_config, name) for name, _ in base.named_modules() if name):
        raise ConfigError(
            f"`target_modules` {targets!r} matches no module of the model (exclude_modules and "
            f"layers_to_transform included); modules it could target: {describe_targets(base)}"
        )


def hrp_initialize(
    model: nn.Module,
    lora_config: LoraConfig,
    batches: Iterable[Any],
    config: HRPConfig,
    *,
    loss_fn: LossFn | None = None,
    adapter_name: str = "default",
    progress: bool = False,
) -> PeftModel:
    """Add a rank-r LoRA to ``model`` initialized by High-Rank Preheating, ready to train.

    Trains a temporary rank-R adapter for ``config.preheat_steps`` steps with its own optimizer, takes the
    SVD of its update s·B·A per layer, initializes the rank-r adapter from the leading singular directions
    (by default A from the top-r right singular vectors, B = 0, so the model still computes the base
    function), then deletes the temporary adapter. The base weights are never changed.

    Args:
        model: a ``torch.nn.Module`` or transformers model not yet wrapped, or a ``PeftModel`` that lacks
            ``adapter_name`` (the adapter is added beside the others).
        lora_config: the LoRA to train afterwards: target modules, ``modules_to_save``, ``rank_pattern``,
            ``alpha_pattern``, ``use_rslora``, ``use_dora``, ... all apply; ``init_lora_weights`` must stay
            True.
        batches: an iterable of batches, one per preheat step, cycled if shorter than the preheat. Under
            accelerate DDP pass each rank its own shard: gradients are averaged across ranks.
        config: the preheat and init settings.
        loss_fn: ``loss_fn(model, batch)`` -> a scalar tensor; default ``model(**batch).loss`` with the
            batch's tensors moved to the model's device.
        adapter_name: the name of the rank-r adapter.
        progress: show a progress bar over the preheat steps.

    Returns:
        The ``PeftModel`` with ``adapter_name`` active and trainable. Train it with a fresh optimizer.

    Raises:
        ConfigError: for bad arguments (checked before the model is touched: rank above the preheat rank,
            target modules that match nothing, an adapter of that name already there, empty batches), and
            for a non-scalar or non-finite loss during the preheat, after which the model is restored as it
            was.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig
        >>> from paperpack.hrp_lora import HRPConfig, hrp_initialize
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16))
        >>> batches = [(torch.randn(32, 16), torch.randn(32, 16)) for _ in range(4)]
        >>> mse = lambda model, batch: torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        >>> model = hrp_initialize(net, LoraConfig(r=2, target_modules=["0"]), batches,
        ...                        HRPConfig(preheat_rank=8, preheat_steps=4, preheat_lr=1e-2), loss_fn=mse)
        >>> model.base_model.model[0].lora_B["default"].weight.abs().max().item()
        0.0
    """
    _check_arguments(model, lora_config, config, loss_fn, adapter_name)
    _check_targets(model, lora_config)
    cycle = _BatchCycle(batches)
    step = _step_fn(cycle, loss_fn if loss_fn is not None else _default_loss)
    device = next(model.parameters()).device
    with seeded(config.seed, device):
        if isinstance(model, PeftModel):
            peft_model, active = model, model.active_adapter
            peft_model.add_adapter(adapter_name, lora_config)
            peft_model.set_adapter(adapter_name)
        else:
            peft_model, active = get_peft_model(model, lora_config, adapter_name=adapter_name), None
    try:
        preheat_and_initialize(peft_model, adapter_name, step, config, progress=progress)
    except BaseException:
        if active is None:
            peft_model.unload()  # puts the original modules back into `model`
        else:
            peft_model.set_adapter(active)
            peft_model.delete_adapter(adapter_name)
            unwrap_empty_layers(peft_model)
        raise
    return peft_model
