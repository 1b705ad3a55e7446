"""Which input tensors make each output tensor: the layout of a merge, worked out from the headers alone.

A merge of whole models (``models:``) maps every key of the reference checkpoint (the base, else the first
model) to itself in every model. A merge by ``slices:`` builds the output's layers slice by slice: output
layer j of a slice comes from layer ``start + offset`` of each source, renamed to the output's numbering; the
parameters outside the layers come from the first slice's sources (embeddings) or the last slice's (everything
else: final norm, LM head), as in mergekit.

Layers are found by name: a key ``<prefix>.<container>.<i>.<rest>`` with ``<container>`` one of ``layers``,
``h``, ``blocks``, ``block``, ``layer`` (Llama, Qwen2, Mistral, GPT-2, GPT-NeoX, Falcon, OPT, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from paperpack.core.errors import CheckpointError

__all__ = ["LAYER_KEY", "Source", "TensorJob", "layer_index", "layer_keys", "layer_position", "num_layers"]

#: A key inside the i-th decoder layer: groups are the prefix up to the index, the index, and the rest.
LAYER_KEY = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks|block|layer)\.)(\d+)(\..+)$")
#: Parameters before the layers (embeddings); every other non-layer parameter comes after them.
_PRE_LAYER_KEY = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings)")


@dataclass(frozen=True)
class Source:
    """One input tensor: the index of its model among the merge's inputs and its key there."""

    model: int
    key: str


@dataclass(frozen=True)
class TensorJob:
    """One output tensor and the input tensors that make it.

    Attributes:
        key: the output key.
        sources: the merged models' tensors, in the recipe's order.
        base: the base model's tensor, or None.
        position: the layer position t in [0, 1] for gradients (0 outside the layers).
        scope: which slice (index) the tensor belongs to, for slice-level parameters; None for ``models:``.
        members: for each source, its index in the recipe's model list (or in the slice's sources).
    """

    key: str
    sources: tuple[Source, ...]
    base: Source | None
    position: float
    scope: int | None = None
    members: tuple[int, ...] = ()


def layer_index(key: str) -> int | None:
    """The decoder-layer index of a key, or None for keys outside the layers."""
    match = LAYER_KEY.match(key)
    return int(match.group(2)) if match else None


def num_layers(keys: Iterable[str]) -> int:
    """The number of decoder layers among ``keys`` (1 + the largest index; 0 without layers)."""
    indices = [index for index in map(layer_index, keys) if index is not None]
    return max(indices) + 1 if indices else 0


def layer_position(index: int | None, count: int) -> float:
    """The gradient position t of layer ``index`` of ``count``: i / (n − 1), 1 when n = 1 (as mergekit)."""
    if index is None:
        return 0.0
    return index / (count - 1) if count > 1 else 1.0


def layer_keys(keys: Sequence[str], index: int) -> dict[str, str]:
    """The keys of one decoder layer, by the part after the layer index (``.mlp.up_proj.weight`` → key)."""
    result = {}
    for key in keys:
        match = LAYER_KEY.match(key)
        if match and int(match.group(2)) == index:
            result[match.group(3)] = key
    return result


def whole_model_jobs(keys: Sequence[str], models: Sequence[int], base: int | None) -> list[TensorJob]:
    """Jobs of a ``models:`` merge: every reference key from every model (and the base)."""
    count = num_layers(keys)
    return [
        TensorJob(
            key=key,
            sources=tuple(Source(model, key) for model in models),
            base=None if base is None else Source(base, key),
            position=layer_position(layer_index(key), count),
            members=tuple(range(len(models))),
        )
        for key in keys
    ]


@dataclass(frozen=True)
class SlicePlan:
    """One slice resolved to input models: the sources (model index, first layer) and the base among them."""

    sources: tuple[tuple[int, int], ...]
    members: tuple[int, ...]
    base: tuple[int, int] | None
    length: int


def sliced_jobs(
    keys_of: Sequence[Sequence[str]], slices: Sequence[SlicePlan], reference: int
) -> tuple[list[TensorJob], int]:
    """Jobs of a ``slices:`` merge, and the number of output layers.

    Args:
        keys_of: each input model's keys.
        slices: the slices, resolved to input models.
        reference: the input whose layer naming the output uses.

    Raises:
        CheckpointError: when a source lacks a layer or its layers differ from the reference's.
    """
    reference_keys = keys_of[reference]
    template = next((LAYER_KEY.match(key) for key in reference_keys if LAYER_KEY.match(key)), None)
    if template is None:
        raise CheckpointError("`slices` need decoder layers, but the reference checkpoint has no layer keys")
    prefix = template.group(1)
    outside = [key for key in reference_keys if layer_index(key) is None]
    pre = [key for key in outside if _PRE_LAYER_KEY.search(key)]
    post = [key for key in outside if not _PRE_LAYER_KEY.search(key)]

    def edge_jobs(names: list[str], item: SlicePlan, number: int) -> list[TensorJob]:
        base = None if item.base is None else Source(item.base[0], "")
        return [
            TensorJob(
                key=key,
                sources=tuple(Source(model, key) for model, _ in item.sources),
                base=None if base is None else Source(base.model, key),
                position=0.0,
                scope=number,
                members=item.members,
            )
            for key in names
        ]

    jobs = edge_jobs(pre, slices[0], 0)
    output_layer = 0
    suffixes: list[str] | None = None
    for number, item in enumerate(slices):
        for offset in range(item.length):
            layers = {}
            for model, start in [*item.sources, *([item.base] if item.base else [])]:
                found = layer_keys(keys_of[model], start + offset)
                if not found:
                    raise CheckpointError(
                        f"slices[{number}]: input {model} has no layer {start + offset} (its layer_range "
                        "runs past its last layer)"
                    )
                layers[(model, start)] = found
            names = list(next(iter(layers.values())))
            if suffixes is None:
                suffixes = names
            for found in layers.values():
                if set(found) != set(suffixes):
                    missing = sorted(set(suffixes) ^ set(found))
                    raise CheckpointError(
                        f"slices[{number}]: layer {offset} of a source has other parameters than the "
                        f"reference layer ({missing[0]!r} differs): mismatched architectures"
                    )
            for suffix in suffixes:
                jobs.append(
                    TensorJob(
                        key=f"{prefix}{output_layer}{suffix}",
                        sources=tuple(
                            Source(model, layers[(model, start)][suffix]) for model, start in item.sources
                        ),
                        base=None if item.base is None else Source(item.base[0], layers[item.base][suffix]),
                        position=layer_position(offset, item.length),
                        scope=number,
                        members=item.members,
                    )
                )
            output_layer += 1
    jobs += edge_jobs(post, slices[-1], len(slices) - 1)
    return jobs, output_layer
