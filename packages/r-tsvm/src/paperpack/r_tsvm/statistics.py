"""Per-model statistics that Fisher merging and RegMean need, computed from a model and a few batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from paperpack.core.errors import ConfigError

__all__ = ["compute_fisher", "compute_gram"]

logger = logging.getLogger(__name__)


def _check_batches(batches: Iterable[Mapping[str, Tensor]]) -> list[Mapping[str, Tensor]]:
    items = list(batches)
    if not items:
        raise ConfigError("`batches` must hold at least one batch, got none")
    for index, batch in enumerate(items):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ConfigError(f"`batches[{index}]` must be a mapping with `input_ids` (a tokenizer's output)")
    return items


def _examples(batch: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    size = batch["input_ids"].shape[0]
    return [{name: value[i : i + 1] for name, value in batch.items()} for i in range(size)]


def compute_fisher(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, empirical: bool = True, seed: int = 0
) -> dict[str, Tensor]:
    """The diagonal Fisher information of a causal LM's trainable parameters, F = E[(∂ log p(y|x) / ∂θ)²].

    Squared gradients are accumulated per example (squaring a batch's mean gradient would underestimate F) and
    averaged over examples. With ``empirical=True`` the labels are the batch's (``labels``, else the inputs
    shifted, as transformers does); otherwise every target token is sampled from the model's own predictive
    distribution, as in Matena & Raffel's true Fisher.

    Args:
        model: a transformers causal LM (or any module taking ``input_ids``, ``attention_mask``,
            ``labels`` and returning ``.loss`` and ``.logits``); its parameters and mode are restored.
        batches: tokenized batches (``input_ids``, optional ``attention_mask`` and ``labels``).
        empirical: use the data's labels (True) or labels sampled from the model (False).
        seed: seeds the label sampling.

    Returns:
        Parameter name to F (float32, the parameter's shape), for every parameter that requires a gradient.
    """
    items = _check_batches(batches)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in items:
            for example in _examples(batch):
                model.zero_grad(set_to_none=True)
                inputs = {k: v for k, v in example.items() if k != "labels"}
                labels = example.get("labels", example["input_ids"])
                if not empirical:
                    with torch.no_grad():
                        logits = model(**inputs).logits
                    sampled = torch.multinomial(
                        torch.softmax(logits[0].float(), dim=-1), 1, generator=generator
                    ).T
                    # Position i predicts token i + 1: shift the samples right to line up with the loss.
                    labels = torch.cat([labels[:, :1], sampled[:, :-1]], dim=1).masked_fill(
                        labels == -100, -100
                    )
                loss = model(**inputs, labels=labels).loss
                loss.backward()
                for name, p in params.items():
                    if p.grad is not None:
                        fisher[name] += p.grad.detach().float().square()
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: value / count for name, value in fisher.items()}


def compute_gram(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, include_lm_head: bool = True
) -> dict[str, Tensor]:
    """RegMean's Gram matrices G = Xᵀ X / N of every ``nn.Linear`` layer's inputs over the batches' tokens.

    Padding positions (``attention_mask == 0``) are left out. Keys are the linear layers' weight names
    (``model.layers.0.mlp.up_proj.weight``), the names RegMean looks up.

    Args:
        model: the fine-tuned model whose inputs are recorded (run in eval mode, without gradients).
        batches: tokenized batches (``input_ids``, optional ``attention_mask``).
        include_lm_head: also record the output head's inputs.

    Returns:
        Weight name to its Gram matrix ``(in_features, in_features)`` in float32.
    """
    items = _check_batches(batches)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    mask: dict[str, Tensor | None] = {"current": None}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach().float()
            keep = mask["current"]
            x = (
                x[keep.bool()]
                if keep is not None and keep.shape == x.shape[:-1]
                else x.reshape(-1, x.shape[-1])
            )
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return record

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (include_lm_head or not name.endswith("lm_head")):
            handles.append(module.register_forward_hook(hook(f"{name}.weight")))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in items:
                mask["current"] = batch.get("attention_mask")
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / counts[name] for name in sums}
