"""The loss SeWA fits its mask on when it runs inside training or on saved model folders.

``selection_batches`` yields minibatches in an order fixed by a seed (so that a resumed run and an
uninterrupted one see the same batches, and data-parallel ranks see disjoint shards); ``model_loss`` turns
them into a ``loss_fn`` for ``select_snapshots``: the model's own loss with the averaged
parameters swapped in by ``torch.func.functional_call``, one new minibatch per call (per Monte Carlo sample).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from paperpack.core.errors import ConfigError

__all__ = ["model_loss", "selection_batches", "tied_aliases"]


def selection_batches(
    source: Iterable[Mapping[str, Any]],
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    passes: int | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Batches in an order fixed by ``seed`` alone: endless for the mask search, or ``passes`` passes.

    For a DataLoader over a map-style dataset (the Trainer's), the dataset is reshuffled with ``seed`` on
    every pass, this rank takes every ``world_size``-th example, and batches of ``batch_size`` go through the
    DataLoader's own ``collate_fn``: the order depends neither on the Trainer's random state nor on whether
    the run was resumed. Any other iterable is cycled as it comes.
    """
    dataset = getattr(source, "dataset", None)
    collate: Callable[[list[Any]], Mapping[str, Any]] | None = getattr(source, "collate_fn", None)
    if collate is None or not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
        yield from _cycle(source, passes)
        return
    size = len(dataset)
    if size < world_size:
        raise ConfigError(f"the selection data holds {size} examples, fewer than the {world_size} processes")
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while passes is None or done < passes:
        order = torch.randperm(size, generator=generator).tolist()[rank::world_size]
        for start in range(0, len(order), batch_size):
            yield collate([dataset[i] for i in order[start : start + batch_size]])
        done += 1


def _cycle(source: Iterable[Mapping[str, Any]], passes: int | None) -> Iterator[Mapping[str, Any]]:
    done = 0
    while passes is None or done < passes:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the selection data yielded no batch")
        done += 1


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Other names of tied parameters (``lm_head.weight``), mapped to the name ``named_parameters`` keeps."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def model_loss(
    model: nn.Module, batches: Iterator[Mapping[str, Any]], device: torch.device
) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """A ``loss_fn`` for ``select_snapshots``: the model's own loss on the next batch.

    ``torch.func.functional_call`` runs ``model`` with the averaged parameters and buffers in place of its own
    (the others stay as they are), so nothing is written into the module during the search. Averaged buffers
    (batch norm's running statistics) enter the forward pass as constants: PyTorch's batch norm is not
    differentiable in its running statistics, so the mask gradient flows through the parameters only.
    """
    buffers = {name for name, _ in model.named_buffers()}
    aliases = tied_aliases(model)

    def loss_fn(params: Mapping[str, Tensor]) -> Tensor:
        batch = {
            key: value.to(device) if isinstance(value, Tensor) else value
            for key, value in next(batches).items()
        }
        swapped = {key: value.detach() if key in buffers else value for key, value in params.items()}
        for alias, name in aliases.items():
            if name in swapped:
                swapped[alias] = swapped[name]
        # The tied names are filled in above, once, instead of by functional_call on every call.
        outputs = functional_call(model, swapped, args=(), kwargs=batch, tie_weights=False)
        loss = (
            outputs.get("loss")
            if isinstance(outputs, Mapping)
            else outputs[0]
            if isinstance(outputs, tuple)
            else outputs
        )
        if not isinstance(loss, Tensor):
            raise ConfigError(
                f"the model returned no loss for a selection batch (keys {sorted(batch)}): "
                "the batches need labels"
            )
        return loss

    return loss_fn
