"""Merging checkpoints on disk, tensor by tensor: memory follows the largest tensor, not the model.

Everything that can be checked from file headers is checked before the first tensor is read: keys, shapes,
vocabulary sizes, LoRA targets, statistics, every tensor's parameters (gradients and filters resolved) and the
output path. The output is written through the core's :class:`~paperpack.core.checkpoints.StateDictWriter`
into a hidden staging folder that is renamed into place only when complete, with the base model's config and
tokenizer, the recipe (``merge_config.yaml``) and ``merge_report.json`` (the method, its parameters, the
models and, for R-TSVM, each layer's ranks and weights). A single ``.safetensors`` output gets its report, the
recipe inside, beside it as ``<name>.merge_report.json``. Outputs follow the core's output policy
(:func:`~paperpack.core.files.check_output`): a new path, an empty folder, or an earlier output of the same
command with ``overwrite``.

:func:`walk_checkpoints` is the same walk without a method: it yields, key by key, the base's and every
model's tensor (LoRA adapters as their dense weights, tied heads resolved), for code that merges by itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
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
from paperpack.core.files import OUTPUT_KEY, atomic_write_text, check_output
from paperpack.r_tsvm.lora import LoraAdapter, is_lora_adapter
from paperpack.r_tsvm.plan import (
    SlicePlan,
    TensorJob,
    sliced_jobs,
    whole_model_jobs,
)
from paperpack.r_tsvm.recipe import MergeConfig, ModelSpec, VocabPolicy, _same_path
from paperpack.r_tsvm.registry import MergeMethod
from paperpack.r_tsvm.settings import resolve
from paperpack.r_tsvm.vocabulary import (
    Vocabulary,
    align_rows,
    build_vocabulary,
    load_tokenizer,
    resolve_chat_template,
)

__all__ = [
    "HEAD_KEY",
    "VOCAB_KEY",
    "TensorGroup",
    "check_merge_output",
    "merge_checkpoints",
    "report_path",
    "walk_checkpoints",
]

logger = logging.getLogger(__name__)

#: Parameters whose first dimension is the vocabulary (input embeddings and LM heads).
VOCAB_KEY = re.compile(r"(embed_tokens|lm_head|wte|word_embeddings|embed_in|embed_out)\.weight$")
#: The output head, absent from checkpoints whose embeddings are tied.
HEAD_KEY = re.compile(r"(^|\.)lm_head\.weight$")
_EMBEDDING_KEY = re.compile(r"(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: config.json keys holding the number of decoder layers, by architecture family.
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


class _FullModel:
    """A model stored in full; a missing tied LM head resolves to the embedding."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.state = LazyStateDict(path, device=device)

    @property
    def keys(self) -> list[str]:
        return list(self.state)

    def key_for(self, key: str) -> str:
        if key in self.state:
            return key
        embeddings = [k for k in self.state if _EMBEDDING_KEY.search(k)]
        if HEAD_KEY.search(key) and len(embeddings) == 1:
            return embeddings[0]
        raise CheckpointError(f"mismatched architectures: {key!r} is not in {self.path}")

    def shape(self, key: str, base_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.state.shape(self.key_for(key))

    def load(self, key: str, base: Tensor | None) -> Tensor:
        return self.state[self.key_for(key)]


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


_Model = _FullModel | _AdapterModel


class _Inputs:
    """Every input checkpoint opened once (a path named twice is one input)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.models: list[_Model] = []

    def add(self, path: str) -> int:
        for index, model in enumerate(self.models):
            if _same_path(model.path, path):
                return index
        self.models.append(
            _AdapterModel(path, self.device) if is_lora_adapter(path) else _FullModel(path, self.device)
        )
        return len(self.models) - 1

    def full(self, index: int, what: str) -> _FullModel:
        model = self.models[index]
        if not isinstance(model, _FullModel):
            raise ConfigError(f"{model.path} is a LoRA adapter; {what} must be a full model")
        return model


def _reconcile_keys(reference: _FullModel, model: _FullModel) -> None:
    """Check a full model's keys against the reference, allowing a tied LM head on either side."""
    ref_keys, keys = set(reference.keys), set(model.keys)
    for key in sorted(ref_keys - keys):
        model.key_for(key)  # a tied head resolves; anything else is a mismatch
    for key in sorted(keys - ref_keys):
        if HEAD_KEY.search(key):
            logger.info("%s has %s but the base ties its embeddings: ignoring it", model.path, key)
            continue
        raise CheckpointError(
            f"mismatched architectures: {key!r} is in {model.path} but not in {reference.path} "
            f"({len(keys - ref_keys)} extra key(s))"
        )


@dataclass
class _Plan:
    method: MergeMethod
    config: MergeConfig
    inputs: _Inputs
    base: int | None
    reference: _FullModel
    jobs: list[TensorJob]
    layers: int | None = None
    statistics: list[LazyStateDict] | None = None
    vocab_keys: set[str] = field(default_factory=set)
    vocabulary: Vocabulary | None = None
    tokenizers: list[Any] = field(default_factory=list)
    resolved: dict[str, tuple[Any, list[float] | None, list[dict[str, Any]] | None]] = field(
        default_factory=dict
    )

    @property
    def has_adapters(self) -> bool:
        return any(isinstance(model, _AdapterModel) for model in self.inputs.models)

    def base_tensor(self, key: str) -> Tensor | None:
        if self.base is None:
            return None
        return self.inputs.full(self.base, "the base model").load(key, None)


def _expected_shape(inputs: _Inputs, job: TensorJob) -> tuple[int, ...]:
    anchor = job.base or job.sources[0]
    model = inputs.models[anchor.model]
    if isinstance(model, _AdapterModel):
        raise ConfigError(f"{model.path} is a LoRA adapter: set `base_model` to the model it adapts")
    return model.shape(anchor.key, ())


def _check_job_shapes(
    inputs: _Inputs, jobs: Sequence[TensorJob], vocab_mismatch: str, aligned: bool
) -> set[str]:
    """Check every source's shape against its job's base (else first source); return the vocabulary keys."""
    vocab_keys: set[str] = set()
    for model in inputs.models:
        if isinstance(model, _AdapterModel):
            known = {job.sources[0].key for job in jobs} | {job.key for job in jobs}
            unknown = sorted(model.adapter.keys - known)
            if unknown:
                raise CheckpointError(
                    f"LoRA adapter {model.path} changes {unknown[0]!r}, which the base model does not have: "
                    "was it trained on another architecture?"
                )
    for job in jobs:
        expected = _expected_shape(inputs, job)
        for source in [*job.sources, *([job.base] if job.base else [])]:
            model = inputs.models[source.model]
            shape = model.shape(source.key, expected)
            if isinstance(model, _AdapterModel):
                delta = model.adapter.delta_shape(source.key)
                if delta is not None and delta != shape:
                    raise CheckpointError(
                        f"LoRA adapter {model.path}: the delta of {source.key!r} has shape {list(delta)}, "
                        f"but the weight has {list(shape)}"
                    )
            if shape == expected:
                continue
            if VOCAB_KEY.search(job.key) and shape[1:] == expected[1:]:
                if aligned:
                    vocab_keys.add(job.key)
                    continue
                if vocab_mismatch == "error":
                    raise CheckpointError(
                        f"vocabulary sizes differ: {job.key!r} has {shape[0]} rows in {model.path} but "
                        f"{expected[0]} in the reference; set `vocab_mismatch: base` to keep the base "
                        "model's tensor, `vocab_mismatch: truncate` to cut (or pad) every model to the "
                        "base's vocabulary, or `tokenizer_source` to align them by token"
                    )
                vocab_keys.add(job.key)
                continue
            raise CheckpointError(
                f"mismatched architectures: {source.key!r} has shape {list(shape)} in {model.path} but "
                f"{list(expected)} in the reference"
            )
    if aligned:
        vocab_keys |= {job.key for job in jobs if VOCAB_KEY.search(job.key)}
    return vocab_keys


def _check_statistics(plan: _Plan) -> None:
    if plan.statistics is None:
        return
    assert plan.config.models is not None  # statistics come with `models:` only
    for spec, stats in zip(plan.config.models, plan.statistics, strict=True):
        for job in plan.jobs:
            key = job.key
            if (
                not plan.reference.state.dtype(plan.reference.key_for(key)).is_floating_point
                or key in plan.vocab_keys
            ):
                continue
            shape = plan.reference.shape(key, ())
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


def _model_scopes(config: MergeConfig, job: TensorJob) -> list[dict[str, Any]]:
    """Each source's own parameters (its model's, or its slice source's)."""
    if config.models is not None:
        return [config.models[m].parameters if m >= 0 else {} for m in job.members]
    assert config.slices is not None
    assert job.scope is not None
    sources = config.slices[job.scope].sources
    return [sources[m].parameters if m >= 0 else {} for m in job.members]


def _resolve_job(plan: _Plan, job: TensorJob) -> tuple[Any, list[float] | None, list[dict[str, Any]] | None]:
    """The method config, weights and per-model parameters of one tensor (every setting evaluated)."""
    config, method = plan.config, plan.method
    shared_scopes = [config.parameters]
    if job.scope is not None and config.slices is not None:
        shared_scopes.insert(0, config.slices[job.scope].parameters)
    shared = {}
    literal = method.list_parameters
    for name in method.parameters:
        value = resolve(name, shared_scopes, job.key, job.position, literal=name in literal)
        if value is not None:
            shared[name] = value
    method_config = method.make_config(shared)
    per_model_names = ("weight", *method.per_model)
    own = _model_scopes(config, job)
    values = [
        {name: resolve(name, [scope, *shared_scopes], source.key, job.position) for name in per_model_names}
        for scope, source in zip(own, job.sources, strict=True)
    ]
    weights = [v.pop("weight") for v in values]
    if all(weight is None for weight in weights):
        weight_list = None
    elif any(weight is None for weight in weights):
        raise ConfigError(
            f"{job.key!r}: give `weight` for every model or for none (some settings leave it unset)"
        )
    else:
        weight_list = [float(weight) for weight in weights]
    model_params = [{k: v for k, v in value.items() if v is not None} for value in values]
    method.model_configs(method_config, model_params, len(job.sources))  # validates each model's values
    return method_config, weight_list, model_params if any(model_params) else None


def _whole_models(
    config: MergeConfig, inputs: _Inputs, base: int | None
) -> tuple[_FullModel, list[TensorJob]]:
    """The reference model and the jobs of a ``models:`` merge."""
    assert config.models is not None
    models = [inputs.add(spec.model) for spec in config.models]
    if base is None and isinstance(inputs.models[models[0]], _AdapterModel):
        raise ConfigError(
            f"{inputs.models[models[0]].path} is a LoRA adapter: set `base_model` to the model it adapts"
        )
    reference = inputs.full(base if base is not None else models[0], "the reference model")
    for index in models:
        model = inputs.models[index]
        if isinstance(model, _FullModel):
            _reconcile_keys(reference, model)
    sources, members = models, list(range(len(models)))
    if config.method.base_first and base is not None:
        sources, members = [base, *models], [-1, *members]
    jobs = [
        TensorJob(job.key, job.sources, job.base, job.position, None, tuple(members))
        for job in whole_model_jobs(reference.keys, sources, base)
    ]
    return reference, jobs


def _slices(
    config: MergeConfig, inputs: _Inputs, base: int | None
) -> tuple[_FullModel, list[TensorJob], int]:
    """The reference model, the jobs and the number of output layers of a ``slices:`` merge."""
    assert config.slices is not None
    method = config.method
    plans = []
    for item in config.slices:
        slice_base = item.base_model or config.base_model
        entries = [(inputs.add(s.model), s.layer_range[0], number) for number, s in enumerate(item.sources)]
        for index, _, _ in entries:
            inputs.full(index, "every slice source")
        base_entry = None
        if slice_base is not None and (method.uses_base or method.optional_base or method.base_first):
            found = [e for e in entries if _same_path(inputs.models[e[0]].path, slice_base)]
            if found:
                base_entry = found[0]
                entries = [e for e in entries if e is not base_entry]
                if method.base_first:
                    entries, base_entry = [base_entry, *entries], None
        plans.append(
            SlicePlan(
                sources=tuple((e[0], e[1]) for e in entries),
                members=tuple(e[2] for e in entries),
                base=None if base_entry is None else (base_entry[0], base_entry[1]),
                length=item.length,
            )
        )
    first = config.slices[0].sources[0].model
    reference = inputs.full(base if base is not None else inputs.add(first), "the reference model")
    keys_of = [model.keys if isinstance(model, _FullModel) else [] for model in inputs.models]
    jobs, layers = sliced_jobs(keys_of, plans, inputs.models.index(reference))
    return reference, jobs, layers


def report_path(output: PathLike) -> Path:
    """Where the report of a single-file output goes: ``<name>.merge_report.json`` beside it."""
    return Path(output).with_suffix(".merge_report.json")


def check_merge_output(
    output: PathLike,
    config: MergeConfig,
    *,
    command: str = "merge",
    overwrite: bool = False,
    flag: str = "output",
) -> None:
    """Check the output (and a single file's report beside it) against the output policy, before any work.

    Raises:
        OutputExistsError: naming ``flag`` and the fix.
        CheckpointError: when the output overlaps an input.
    """
    single = Path(output).suffix == ".safetensors"
    check_output(output, command=command, overwrite=overwrite, inputs=config.paths(), flag=flag, file=single)
    if single:
        check_output(
            report_path(output),
            command=command,
            overwrite=overwrite,
            inputs=config.paths(),
            flag=flag,
            file=True,
        )


def _open(config: MergeConfig, output: PathLike | None, device: torch.device) -> _Plan:
    """Open every input and work out the merge from the headers: nothing is read or written yet."""
    if output is not None:
        check_output_path(output, config.paths())
    inputs = _Inputs(device)
    base = inputs.add(config.base_model) if config.base_model else None
    layers: int | None = None
    if config.models is not None:
        reference, jobs = _whole_models(config, inputs, base)
    else:
        reference, jobs, layers = _slices(config, inputs, base)
    statistics = None
    if config.models is not None and any(spec.statistics for spec in config.models):
        statistics = [LazyStateDict(str(spec.statistics), device=device) for spec in config.models]
    plan = _Plan(config.method, config, inputs, base, reference, jobs, layers, statistics)
    aligned = config.tokenizer_source is not None
    plan.vocab_keys = _check_job_shapes(inputs, jobs, config.vocab_mismatch, aligned)
    _check_statistics(plan)
    if aligned or config.chat_template == "auto":
        plan.tokenizers = [load_tokenizer(model.path) for model in inputs.models]
    if aligned:
        rows = [
            model.shape(model.key_for(_vocab_key(reference)), ())[0] if isinstance(model, _FullModel) else 0
            for model in inputs.models
        ]
        anchor = base if base is not None else inputs.models.index(reference)
        plan.vocabulary = build_vocabulary(str(config.tokenizer_source), plan.tokenizers, rows, anchor)
    for job in jobs:  # every tensor's parameters, checked before anything is read
        plan.resolved[job.key] = _resolve_job(plan, job)
    return plan


def _vocab_key(reference: _FullModel) -> str:
    for key in reference.keys:
        if _EMBEDDING_KEY.search(key):
            return key
    raise CheckpointError(f"`tokenizer_source` needs an input embedding, but {reference.path} has none")


def _fit_rows(tensor: Tensor, rows: int, filler: Tensor) -> Tensor:
    """Cut ``tensor`` to ``rows`` rows, or pad it with ``filler``'s rows (the base's, a zero task vector)."""
    if tensor.shape[0] >= rows:
        return tensor[:rows]
    return torch.cat([tensor, filler[tensor.shape[0] : rows].to(tensor.dtype)])


def _load(plan: _Plan, job: TensorJob) -> tuple[Tensor | None, list[Tensor]]:
    """The job's base tensor (when anything needs it) and its sources' tensors, aligned to the output rows."""
    method = plan.method
    needs_base = method.uses_base or method.optional_base or plan.has_adapters or job.key in plan.vocab_keys
    base = None
    if job.base is not None and needs_base:
        base = plan.inputs.models[job.base.model].load(job.base.key, None)
    tensors = []
    for source in job.sources:
        model = plan.inputs.models[source.model]
        adapter_base = (
            base if base is not None or not isinstance(model, _AdapterModel) else plan.base_tensor(source.key)
        )
        tensors.append(model.load(source.key, adapter_base))
    if job.key in plan.vocab_keys:
        if plan.vocabulary is not None:
            inputs = [s.model for s in job.sources]
            if base is not None and job.base is not None:
                aligned = align_rows([base, *tensors], [job.base.model, *inputs], plan.vocabulary, 0)
                base, tensors = aligned[0], aligned[1:]
            else:
                tensors = align_rows(tensors, inputs, plan.vocabulary, None)
        elif plan.config.vocab_mismatch == "truncate":
            filler = base if base is not None else plan.reference.load(job.key, None)
            tensors = [_fit_rows(t, filler.shape[0], filler) for t in tensors]
    return base, tensors


def _merge_job(plan: _Plan, job: TensorJob) -> tuple[Tensor, dict[str, Any]]:
    anchor = job.base or job.sources[0]
    anchor_model = plan.inputs.full(anchor.model, "the reference model")
    reference_dtype = anchor_model.state.dtype(anchor_model.key_for(anchor.key))
    out_dtype = _DTYPES[plan.config.dtype] if plan.config.dtype else reference_dtype
    keep_base = (
        job.key in plan.vocab_keys and plan.config.vocab_mismatch == "base" and plan.vocabulary is None
    )
    if not reference_dtype.is_floating_point or keep_base:
        kept = anchor_model.load(anchor.key, None)
        return (kept.to(out_dtype) if reference_dtype.is_floating_point else kept), {}
    base, tensors = _load(plan, job)
    stats = None
    if plan.statistics is not None and all(job.key in s for s in plan.statistics):
        stats = [s[job.key] for s in plan.statistics]
        if job.key in plan.vocab_keys and plan.method.statistic == "fisher":
            rows = tensors[0].shape[0]
            stats = [_fit_rows(s, rows, torch.zeros(rows, *s.shape[1:], dtype=s.dtype)) for s in stats]
    config, weights, model_params = plan.resolved[job.key]
    merged, report = plan.method.merge_with_report(
        base if plan.method.uses_base or plan.method.optional_base else None,
        tensors,
        weights=weights,
        config=config,
        key=job.key,
        statistics=stats,
        model_params=model_params,
    )
    if not torch.isfinite(merged).all():
        raise CheckpointError(
            f"the merge of {job.key!r} has non-finite values (NaN or inf); nothing was written"
        )
    return merged.to(out_dtype), report


def _patch_model_config(plan: _Plan, folder: Path) -> None:
    """Update the copied config.json: the number of layers (slices), the vocabulary size and the dtype."""
    file = folder / "config.json"
    if not file.is_file():
        return
    data = json.loads(file.read_text())
    if plan.layers is not None:
        count_key = next((k for k in _LAYER_COUNT_KEYS if isinstance(data.get(k), int)), None)
        if count_key is None:
            logger.warning("config.json names no layer count (%s): not updated", ", ".join(_LAYER_COUNT_KEYS))
        else:
            old = data[count_key]
            data[count_key] = plan.layers
            if isinstance(data.get("layer_types"), list) and len(data["layer_types"]) == old:
                data["layer_types"] = _layer_types(plan, data["layer_types"])
    if plan.vocabulary is not None:
        data["vocab_size"] = plan.vocabulary.size
    if plan.config.dtype is not None:
        for name in ("dtype", "torch_dtype"):
            if name in data:
                data[name] = plan.config.dtype
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _layer_types(plan: _Plan, types: list[Any]) -> list[Any]:
    """Per-layer attention types of the output, each taken from the layer it was built from."""
    assert plan.config.slices is not None
    result = []
    for item in plan.config.slices:
        start = item.sources[0].layer_range[0]
        result += [types[min(start + offset, len(types) - 1)] for offset in range(item.length)]
    return result


def _write_tokenizer(plan: _Plan, folder: Path) -> None:
    """Save the output vocabulary's tokenizer (with ``tokenizer_source``) and set the chat template."""
    from transformers import AutoTokenizer

    tokenizer = plan.vocabulary.tokenizer if plan.vocabulary is not None else None
    template = plan.config.chat_template
    if template is not None:
        if tokenizer is None:
            if load_tokenizer(folder) is None:
                logger.warning("chat_template is set but the output has no tokenizer: not saved")
                return
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        resolved = resolve_chat_template(template, plan.tokenizers)
        if resolved is not None:
            tokenizer.chat_template = resolved
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def _summary(plan: _Plan, layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config = plan.config
    return {
        "recipe": config.to_dict(),
        "merge_method": plan.method.name,
        "parameters": {**asdict(config.method_config), **config.parameters},
        "weights": config.weights,
        "base_model": config.base_model,
        "models": [spec.model for spec in config.models] if config.models is not None else None,
        "slices": None
        if config.slices is None
        else [[[s.model, *s.layer_range] for s in item.sources] for item in config.slices],
        "layers": layers,
    }


def merge_checkpoints(
    config: MergeConfig | PathLike | Mapping[str, Any],
    output: PathLike,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    command: str = "merge",
) -> Path:
    """Merge checkpoints on disk into a new model folder, streaming one tensor at a time.

    Inputs are model folders (single or sharded safetensors), ``.safetensors`` files, or PEFT LoRA adapter
    folders (merged as dense deltas s · B A on the base model). The output folder holds the merged weights
    (sharded above ``max_shard_size``), the base model's config (its layer count and vocabulary size updated
    for slices and ``tokenizer_source``), generation config and tokenizer, the recipe ``merge_config.yaml``
    and ``merge_report.json`` (the recipe, the method, its parameters and models; for R-TSVM also each layer's
    ranks and outlier weights). It loads with ``from_pretrained``. A ``.safetensors`` output gets its report
    beside it (``<name>.merge_report.json``).

    Args:
        config: a :class:`MergeConfig`, a path to its YAML file, or a mapping in the YAML layout.
        output: the output folder (or ``.safetensors`` file): a new path or an empty folder, or an earlier
            output of ``command`` with ``overwrite``; it must not be, or lie inside, an input.
        progress: show a progress bar over tensors.
        device: where the arithmetic runs ("cpu", "cuda", "auto"); tensors are read to it one key at a time
            and written back from the CPU.
        overwrite: replace an earlier output of ``command`` at ``output``.
        command: the command recorded in the output's marker (``paperpack merge`` passes ``"merge"``).

    Returns:
        The output path.

    Raises:
        ConfigError: for an invalid recipe or parameter value.
        CheckpointError: for mismatched keys, shapes or vocabularies, unsupported adapters, an output that is
            an input, or a merge with non-finite values. Everything but the last is raised before anything is
            written; a failure while merging removes the partial output.
        OutputExistsError: for an output in the way (see the output policy).

    Examples:
        >>> from paperpack.r_tsvm import merge_checkpoints
        >>> merge_checkpoints("merge.yaml", "merged-model")  # doctest: +SKIP
        PosixPath('merged-model')
    """
    if isinstance(config, Mapping):
        config = MergeConfig.from_dict(dict(config))
    elif not isinstance(config, MergeConfig):
        config = MergeConfig.from_yaml(config)
    check_merge_output(output, config, command=command, overwrite=overwrite)
    plan = _open(config, output, resolve_device(device))
    logger.info("merging with %s into %s", plan.method.name, output)
    layers: dict[str, dict[str, Any]] = {}
    metadata = {"merge_method": plan.method.name}
    with StateDictWriter(
        output,
        max_shard_size=config.max_shard_size,
        metadata=metadata,
        command=command,
        overwrite=overwrite,
        inputs=config.paths(),
    ) as writer:
        for job in tqdm(plan.jobs, desc=f"merging ({plan.method.name})", unit="tensor", disable=not progress):
            merged, report = _merge_job(plan, job)
            writer.add(job.key, merged)
            if report:
                layers[job.key] = report
        summary = _summary(plan, layers)
        if not writer.single_file:
            copy_model_files(plan.reference.path, writer.staging_dir)
            _patch_model_config(plan, writer.staging_dir)
            _write_tokenizer(plan, writer.staging_dir)
            (writer.staging_dir / "merge_config.yaml").write_text(config.to_yaml())
            (writer.staging_dir / "merge_report.json").write_text(json.dumps(summary, indent=2))
    if writer.single_file:  # marked as ours, so that `overwrite` may replace it with the file
        atomic_write_text(report_path(writer.path), json.dumps({OUTPUT_KEY: command, **summary}, indent=2))
    return writer.path


@dataclass(frozen=True)
class TensorGroup:
    """One key of N checkpoints, as :func:`walk_checkpoints` yields it.

    Attributes:
        key: the parameter's name (the base's, else the first model's).
        base: the base model's tensor, or None without a base.
        tensors: each model's tensor, in the order given (a LoRA adapter's is the base plus its delta; a tied
            model's LM head is its embedding; rows cut or padded with ``vocab_mismatch="truncate"``).
    """

    key: str
    base: Tensor | None
    tensors: list[Tensor]


def walk_checkpoints(
    models: Sequence[PathLike],
    *,
    base_model: PathLike | None = None,
    device: str | torch.device = "cpu",
    vocab_mismatch: VocabPolicy = "error",
    progress: bool = False,
) -> Iterator[TensorGroup]:
    """Walk N checkpoints key by key, holding one key's tensors at a time.

    The same walk :func:`merge_checkpoints` makes, without a method: keys, shapes, tied heads, LoRA targets
    and vocabulary sizes are checked from the headers before the first tensor is read, then each key's tensors
    are read (to ``device``) and yielded. Combine them with :func:`~paperpack.r_tsvm.merge_tensors` (or
    anything else) and write with the core's :class:`~paperpack.core.checkpoints.StateDictWriter`.

    Args:
        models: model folders, ``.safetensors`` files or sharded folders, or LoRA adapter folders (these need
            ``base_model``).
        base_model: the base model θ_0, or None.
        device: where tensors are read to.
        vocab_mismatch: embeddings / LM heads of another vocabulary size: "error", "base" (yield only the
            base's rows: the models' tensors are the base's) or "truncate" (cut or pad each model's rows to
            the base's).
        progress: show a progress bar over keys.

    Yields:
        :class:`TensorGroup` per key of the base (else the first model), in file order.

    Raises:
        ConfigError: for an adapter without a base, or a bad ``vocab_mismatch``.
        CheckpointError: for mismatched keys, shapes or vocabularies (before anything is yielded).

    Examples:
        >>> from paperpack.r_tsvm import merge_tensors, walk_checkpoints
        >>> for group in walk_checkpoints(["expert-a", "expert-b"], base_model="base"):  # doctest: +SKIP
        ...     merged = merge_tensors("ties", group.base, group.tensors, key=group.key, density=0.3)
    """
    if not isinstance(models, Sequence) or isinstance(models, str | bytes) or not models:
        raise ConfigError("`models` must be a non-empty list of checkpoint paths")
    config = MergeConfig(
        "linear",
        models=[ModelSpec(model=str(path)) for path in models],
        base_model=None if base_model is None else str(base_model),
        vocab_mismatch=vocab_mismatch,
    )
    plan = _open(config, None, resolve_device(device))
    base_index = plan.base
    for job in tqdm(plan.jobs, desc="checkpoints", unit="tensor", disable=not progress):
        if job.key in plan.vocab_keys and vocab_mismatch == "base":
            kept = plan.reference.load(job.key, None)
            yield TensorGroup(job.key, kept if base_index is not None else None, [kept] * len(job.sources))
            continue
        base = plan.base_tensor(job.key) if base_index is not None else None
        tensors = [plan.inputs.models[source.model].load(source.key, base) for source in job.sources]
        if job.key in plan.vocab_keys and vocab_mismatch == "truncate":
            filler = base if base is not None else plan.reference.load(job.key, None)
            tensors = [_fit_rows(t, filler.shape[0], filler) for t in tensors]
        yield TensorGroup(job.key, base, tensors)
