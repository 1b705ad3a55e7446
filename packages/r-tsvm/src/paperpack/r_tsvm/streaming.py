"""Merging checkpoints on disk, tensor by tensor: memory follows the largest tensor, not the model.

Everything that can be checked from file headers is checked before the first tensor is read: keys, shapes,
vocabulary sizes, LoRA targets, statistics and the output path. The output is written through the core's
:class:`~paperpack.core.checkpoints.StateDictWriter` into a hidden staging folder that is renamed into place
only when complete, with the base model's config and tokenizer, the recipe (``merge_config.yaml``) and
``merge_report.json`` (the method, its parameters, the models and, for R-TSVM, each layer's ranks and
weights).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from paperpack.core.checkpoints import (
    LazyStateDict,
    PathLike,
    StateDictWriter,
    check_output_path,
    copy_model_files,
)
from paperpack.core.device import resolve_device
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.r_tsvm.lora import LoraAdapter, is_lora_adapter
from paperpack.r_tsvm.recipe import MergeConfig
from paperpack.r_tsvm.registry import MergeMethod, get_method

__all__ = ["HEAD_KEY", "VOCAB_KEY", "merge_checkpoints"]

logger = logging.getLogger(__name__)

#: Parameters whose first dimension is the vocabulary (input embeddings and LM heads).
VOCAB_KEY = re.compile(r"(embed_tokens|lm_head|wte|word_embeddings|embed_in|embed_out)\.weight$")
#: The output head, absent from checkpoints whose embeddings are tied.
HEAD_KEY = re.compile(r"(^|\.)lm_head\.weight$")
_EMBEDDING_KEY = re.compile(r"(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _FullModel:
    """A fine-tuned model stored in full; ``aliases`` maps a missing tied head to the embedding."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.state = LazyStateDict(path, device=device)
        self.aliases: dict[str, str] = {}

    def shape(self, key: str, base_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.state.shape(self.aliases.get(key, key))

    def load(self, key: str, base: Tensor | None) -> Tensor:
        return self.state[self.aliases.get(key, key)]


class _AdapterModel:
    """A fine-tuned model given as a LoRA adapter on the base model."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.adapter = LoraAdapter(path, device=device)

    def shape(self, key: str, base_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.adapter.full_shape(key) or base_shape

    def load(self, key: str, base: Tensor | None) -> Tensor:
        if base is None:
            raise CheckpointError(f"LoRA adapter {self.path} needs the base model's {key!r}")
        return self.adapter.tensor(key, base)


@dataclass
class _Plan:
    method: MergeMethod
    config: MergeConfig
    base: LazyStateDict | None
    reference: LazyStateDict
    models: list[_FullModel | _AdapterModel]
    statistics: list[LazyStateDict] | None
    vocab_keys: set[str] = field(default_factory=set)

    @property
    def has_adapters(self) -> bool:
        return any(isinstance(model, _AdapterModel) for model in self.models)


def _open_models(config: MergeConfig, device: torch.device) -> list[_FullModel | _AdapterModel]:
    models: list[_FullModel | _AdapterModel] = []
    for spec in config.models:
        if is_lora_adapter(spec.model):
            if config.base_model is None:
                raise ConfigError(f"{spec.model} is a LoRA adapter: set `base_model` to the model it adapts")
            models.append(_AdapterModel(spec.model, device))
        else:
            models.append(_FullModel(spec.model, device))
    return models


def _reconcile_keys(reference: LazyStateDict, model: _FullModel) -> None:
    """Check a full model's keys against the reference, allowing a tied LM head on either side."""
    ref_keys, keys = set(reference), set(model.state)
    for key in sorted(ref_keys - keys):
        embeddings = [k for k in keys if _EMBEDDING_KEY.search(k)]
        if HEAD_KEY.search(key) and len(embeddings) == 1:
            logger.info("%s has no %s (tied embeddings): using %s", model.path, key, embeddings[0])
            model.aliases[key] = embeddings[0]
            continue
        raise CheckpointError(
            f"mismatched architectures: {key!r} is in {reference.path} but not in {model.path} "
            f"({len(ref_keys - keys)} key(s) missing)"
        )
    for key in sorted(keys - ref_keys):
        if HEAD_KEY.search(key):
            logger.info("%s has %s but the base ties its embeddings: ignoring it", model.path, key)
            continue
        raise CheckpointError(
            f"mismatched architectures: {key!r} is in {model.path} but not in {reference.path} "
            f"({len(keys - ref_keys)} extra key(s))"
        )


def _check_shapes(plan: _Plan) -> None:
    reference = plan.reference
    for model in plan.models:
        if isinstance(model, _AdapterModel):
            unknown = sorted(model.adapter.keys - set(reference))
            if unknown:
                raise CheckpointError(
                    f"LoRA adapter {model.path} changes {unknown[0]!r}, which the base model "
                    f"{reference.path} "
                    "does not have: was it trained on another architecture?"
                )
        else:
            _reconcile_keys(reference, model)
    for key in reference:
        expected = reference.shape(key)
        for model in plan.models:
            shape = model.shape(key, expected)
            if isinstance(model, _AdapterModel):
                delta = model.adapter.delta_shape(key)
                if delta is not None and delta != shape:
                    raise CheckpointError(
                        f"LoRA adapter {model.path}: the delta of {key!r} has shape {list(delta)}, but the "
                        "weight "
                        f"has {list(shape)}"
                    )
            if shape == expected:
                continue
            if VOCAB_KEY.search(key) and shape[1:] == expected[1:]:
                if plan.config.vocab_mismatch == "error":
                    raise CheckpointError(
                        f"vocabulary sizes differ: {key!r} has {shape[0]} rows in {model.path} but "
                        f"{expected[0]} in "
                        f"{reference.path}; set `vocab_mismatch: base` to keep the base model's tensor or "
                        "`vocab_mismatch: truncate` to cut (or pad) every model to the base's vocabulary"
                    )
                plan.vocab_keys.add(key)
                continue
            raise CheckpointError(
                f"mismatched architectures: {key!r} has shape {list(shape)} in {model.path} but "
                f"{list(expected)} "
                f"in {reference.path}"
            )


def _check_statistics(plan: _Plan) -> None:
    if plan.statistics is None:
        return
    reference = plan.reference
    for spec, stats in zip(plan.config.models, plan.statistics, strict=True):
        for key in reference:
            if not reference.dtype(key).is_floating_point or key in plan.vocab_keys:
                continue
            shape = reference.shape(key)
            if key not in stats:
                if plan.method.statistic == "fisher":
                    raise CheckpointError(
                        f"statistics file {stats.path} (for {spec.model}) has no Fisher for {key!r}"
                    )
                continue
            wanted = shape if plan.method.statistic == "fisher" else (shape[-1], shape[-1])
            if stats.shape(key) != wanted:
                raise CheckpointError(
                    f"statistics file {stats.path}: {key!r} has shape {list(stats.shape(key))}, expected "
                    f"{list(wanted)}"
                )


def _plan(config: MergeConfig, output: PathLike, device: torch.device) -> _Plan:
    method = get_method(config.merge_method)
    check_output_path(output, config.paths())
    base = LazyStateDict(config.base_model, device=device) if config.base_model else None
    models = _open_models(config, device)
    if base is not None:
        reference = base
    elif isinstance(models[0], _FullModel):
        reference = models[0].state
    else:
        raise ConfigError("set `base_model`: a LoRA adapter cannot serve as the reference model")
    statistics = None
    if any(spec.statistics for spec in config.models):
        statistics = [LazyStateDict(str(spec.statistics), device=device) for spec in config.models]
    plan = _Plan(method, config, base, reference, models, statistics)
    _check_shapes(plan)
    _check_statistics(plan)
    return plan


def _fit_rows(tensor: Tensor, rows: int, filler: Tensor) -> Tensor:
    """Cut ``tensor`` to ``rows`` rows, or pad it with ``filler``'s rows (the base's, a zero task vector)."""
    if tensor.shape[0] >= rows:
        return tensor[:rows]
    return torch.cat([tensor, filler[tensor.shape[0] : rows].to(tensor.dtype)])


def _merge_key(plan: _Plan, key: str) -> tuple[Tensor, dict[str, Any]]:
    reference = plan.reference
    ref_dtype = reference.dtype(key)
    out_dtype = _DTYPES[plan.config.dtype] if plan.config.dtype else ref_dtype
    if not ref_dtype.is_floating_point or (key in plan.vocab_keys and plan.config.vocab_mismatch == "base"):
        kept = reference[key]
        return (kept.to(out_dtype) if ref_dtype.is_floating_point else kept), {}
    # The base is read only when something needs it: linear merges of full models skip it.
    needs_base = plan.method.uses_base or plan.has_adapters or key in plan.vocab_keys
    base = plan.base[key] if plan.base is not None and needs_base else None
    tensors = [model.load(key, base) for model in plan.models]
    stats = None
    if plan.statistics is not None and all(key in s for s in plan.statistics):
        stats = [s[key] for s in plan.statistics]
    if key in plan.vocab_keys:
        filler = base if base is not None else reference[key]
        rows = filler.shape[0]
        tensors = [_fit_rows(t, rows, filler) for t in tensors]
        if stats is not None and plan.method.statistic == "fisher":
            stats = [_fit_rows(s, rows, torch.zeros_like(filler, dtype=s.dtype)) for s in stats]
    merged, report = plan.method.merge_with_report(
        base if plan.method.uses_base else None,
        tensors,
        weights=plan.config.weights,
        config=plan.config.method_config,
        key=key,
        statistics=stats,
    )
    return merged.to(out_dtype), report


def merge_checkpoints(
    config: MergeConfig | PathLike | Mapping[str, Any],
    output: PathLike,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> Path:
    """Merge checkpoints on disk into a new model folder, streaming one tensor at a time.

    Inputs are model folders (single or sharded safetensors), ``.safetensors`` files, or PEFT LoRA adapter
    folders (merged as dense deltas s · B A on the base model). The output folder holds the merged weights
    (sharded above ``max_shard_size``), the base model's config, generation config and tokenizer, the recipe
    ``merge_config.yaml`` and ``merge_report.json`` (the method, its parameters and models; for R-TSVM also
    each layer's ranks and outlier weights). It loads with ``from_pretrained``.

    Args:
        config: a :class:`MergeConfig`, a path to its YAML file, or a mapping in the YAML layout.
        output: the output folder; a new path or an empty folder, or with ``overwrite`` an earlier output of
            ``r-tsvm merge`` (the core's output policy); it must not be, or lie inside, an input.
        progress: show a progress bar over tensors.
        device: where the arithmetic runs ("cpu", "cuda", "auto"); tensors are read to it one key at a time
            and written back from the CPU.
        overwrite: replace an earlier output of ``r-tsvm merge`` at ``output``.

    Returns:
        The output folder.

    Raises:
        ConfigError: for an invalid recipe.
        CheckpointError: for mismatched keys, shapes or vocabularies, unsupported adapters, or an output
            that is an input; raised before anything is written. A failure while merging removes the partial
            output.

    Example:
        >>> from paperpack.r_tsvm import merge_checkpoints
        >>> merge_checkpoints("merge.yaml", "merged-model")  # doctest: +SKIP
        PosixPath('merged-model')
    """
    if isinstance(config, Mapping):
        config = MergeConfig.from_dict(dict(config))
    elif not isinstance(config, MergeConfig):
        config = MergeConfig.from_yaml(config)
    plan = _plan(config, output, resolve_device(device))
    logger.info("merging %d model(s) with %s into %s", len(plan.models), plan.method.name, output)
    layers: dict[str, dict[str, Any]] = {}
    metadata = {"merge_method": plan.method.name}
    with StateDictWriter(
        output,
        max_shard_size=config.max_shard_size,
        metadata=metadata,
        command="r-tsvm merge",
        overwrite=overwrite,
        inputs=config.paths(),
    ) as writer:
        for key in tqdm(
            list(plan.reference), desc=f"merging ({plan.method.name})", unit="tensor", disable=not progress
        ):
            merged, report = _merge_key(plan, key)
            writer.add(key, merged)
            if report:
                layers[key] = report
        if not writer.single_file:
            source = config.base_model or config.models[0].model
            copy_model_files(source, writer.staging_dir)
            (writer.staging_dir / "merge_config.yaml").write_text(config.to_yaml())
            # Written for every method (``layers`` empty for those without a per-layer report).
            summary = {
                "merge_method": plan.method.name,
                "parameters": asdict(config.method_config),
                "weights": config.weights,
                "models": [spec.model for spec in config.models],
                "layers": layers,
            }
            (writer.staging_dir / "merge_report.json").write_text(json.dumps(summary, indent=2))
    return writer.path
