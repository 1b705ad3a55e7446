"""Compiling a Mediator: measure conflict, average or route each unit, build the experts, train the router.

Two streaming passes over the checkpoints (memory: one tensor per expert at a time, plus what the merge method
needs for that tensor), then the router:

1. d_l for every unit (:func:`~paperpack.merge_router.layer_conflicts`); the units past the threshold are
   routed (:func:`~paperpack.merge_router.select_routed`). Only the units inside the decoder blocks (the
   paper's layers) compete; the tensors outside the blocks (the embeddings, the final norm, the LM head) are
   averaged unless ``route_embeddings``, and their d_l is still reported.
2. Per tensor: in an averaged unit θ* = mean_i θ_i (r-tsvm's ``linear``); in a routed unit the dense expert
   D = ``dense_method``(θ_0, θ_1..θ_n) and, per task, S_i = TopK(θ_i − D, δ). D (or θ*) goes to the dense
   model, S_i to the task's sparse expert file, each written as it is computed.
3. The router is trained on the task prompts' features, read from the dense model.

The output folder, written atomically (nothing is left on failure)::

    mediator/                         # --output
    ├── config.json, model.safetensors (or shards + index), tokenizer files, generation_config.json
    │                                 # the dense model: AutoModelForCausalLM.from_pretrained loads it alone
    ├── mediator_config.json          # tasks, routed units and keys, d_l per unit, config, router sizes
    └── mediator/
        ├── experts-<task>.safetensors   # per routed tensor: "<key>.idx" (int32) and "<key>.val"
        └── router.safetensors
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from paperpack.core.checkpoints import PathLike, StateDictWriter, copy_model_files
from paperpack.core.device import resolve_device
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.files import check_output
from paperpack.merge_router.config import MediatorConfig
from paperpack.merge_router.conflicts import layer_conflicts, select_routed
from paperpack.merge_router.inputs import check_task_names, walk_experts
from paperpack.merge_router.router import (
    Router,
    embedding_features,
    hidden_features,
    router_metadata,
    save_router,
    train_router,
)
from paperpack.merge_router.sparse import INDEX_SUFFIX, VALUE_SUFFIX, extract_sparse
from paperpack.merge_router.units import in_block, unit_of

__all__ = [
    "COMPILE_COMMAND",
    "CONFIG_NAME",
    "EXPERTS_FOLDER",
    "ROUTER_FILE",
    "MediatorReport",
    "compile_mediator",
    "expert_file",
]

logger = logging.getLogger(__name__)

#: The command recorded in a compiled folder's output marker (``--overwrite`` replaces only such a folder).
COMPILE_COMMAND = "merge-router compile"
#: The file describing a compiled Mediator.
CONFIG_NAME = "mediator_config.json"
#: The folder holding the sparse experts and the router.
EXPERTS_FOLDER = "mediator"
#: The router's weights, inside :data:`EXPERTS_FOLDER`.
ROUTER_FILE = "router.safetensors"
#: The version of the folder layout, in ``mediator_config.json``.
FORMAT_VERSION = 1
_FEATURE_BATCH = 64


def expert_file(task: str) -> str:
    """The sparse expert file of ``task``, relative to the compiled folder."""
    return f"{EXPERTS_FOLDER}/experts-{task}.safetensors"


@dataclass
class MediatorReport:
    """What :func:`compile_mediator` built.

    Attributes:
        output: the compiled folder.
        tasks: the task names, in the router's order.
        conflicts: d_l per unit, in the model's key order.
        routed_units: the units kept as dense + sparse experts and routed.
        routed_keys: the tensors of the routed units.
        routed_parameters: entries in the routed tensors.
        total_parameters: entries in all floating-point tensors of the model.
        router_accuracy: the router's accuracy on the held-out prompts (None with ``router_holdout = 0``).
        storage_bytes: every file of the folder, in bytes.
        dense_bytes: the dense model's weight files.
        sparse_bytes: the sparse expert files.
        router_bytes: the router file.
    """

    output: Path
    tasks: list[str]
    conflicts: dict[str, float]
    routed_units: list[str]
    routed_keys: list[str]
    routed_parameters: int
    total_parameters: int
    router_accuracy: float | None
    storage_bytes: int = 0
    dense_bytes: int = 0
    sparse_bytes: int = 0
    router_bytes: int = 0

    @property
    def routed_fraction(self) -> float:
        """ρ: the fraction of the model's parameters in routed tensors."""
        return self.routed_parameters / self.total_parameters if self.total_parameters else 0.0


def _check_prompts(task_prompts: object, tasks: Sequence[str]) -> dict[str, list[str]]:
    if not isinstance(task_prompts, Mapping):
        raise ConfigError(
            f"`task_prompts` must map each task name to a list of prompts, got {task_prompts!r}"
        )
    missing = [task for task in tasks if task not in task_prompts]
    if missing:
        raise ConfigError(
            f"task {missing[0]!r} has no prompts: `task_prompts` must give prompts for every expert "
            f"({', '.join(tasks)})"
        )
    extra = [task for task in task_prompts if task not in tasks]
    if extra:
        raise ConfigError(
            f"`task_prompts` names task {extra[0]!r}, which is not an expert ({', '.join(tasks)})"
        )
    prompts = {}
    for task in tasks:
        texts = task_prompts[task]
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ConfigError(f"task {task!r} has no prompts: give a non-empty list of prompt texts")
        if not all(isinstance(text, str) and text for text in texts):
            raise ConfigError(f"the prompts of task {task!r} must be non-empty strings")
        if len(texts) < 2:
            raise ConfigError(f"task {task!r} has 1 prompt; the router needs at least 2 per task")
        prompts[task] = list(texts)
    return prompts


def _check_paths(base: PathLike, experts: Mapping[str, PathLike]) -> None:
    for what, path in (("base", base), *((f"expert {name!r}", p) for name, p in experts.items())):
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"{what} must be a model folder (compile_mediator reads folders), got {path!r}")
        if not Path(path).exists():
            raise CheckpointNotFoundError(f"{what} {os.fspath(path)!r} does not exist")
    if not (Path(base) / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"base {os.fspath(base)!r} is not a transformers model folder (no config.json): the dense model "
            "takes its config and tokenizer"
        )


@dataclass
class _Skeleton:
    """What the base model's architecture tells: its vocabulary tensors, depth and config."""

    config: Any
    embedding_key: str
    vocabulary_keys: set[str]
    num_layers: int


def _skeleton(base: PathLike) -> _Skeleton:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call,unused-ignore]
    state = model.state_dict(keep_vars=True)
    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings()
    vocabulary = {inputs} | ({outputs.weight} if outputs is not None else set())
    keys = {key for key, value in state.items() if any(value is tensor for tensor in vocabulary)}
    embedding_key = next(key for key, value in state.items() if value is inputs)
    return _Skeleton(config, embedding_key, keys, int(config.num_hidden_layers))


def _load_tokenizer(base: PathLike) -> Any:
    from transformers import AutoTokenizer

    from paperpack.core.data import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(base)
    ensure_pad_token(tokenizer)
    return tokenizer


def prompt_features(
    texts: Sequence[str],
    tokenizer: Any,
    config: MediatorConfig,
    *,
    embedding: Tensor | None = None,
    model: torch.nn.Module | None = None,
) -> Tensor:
    """The router's features of ``texts``: from the input ``embedding`` (layer 0) or the dense ``model``."""
    rows = []
    for start in range(0, len(texts), _FEATURE_BATCH):
        batch = tokenizer(list(texts[start : start + _FEATURE_BATCH]), return_tensors="pt", padding=True)
        if config.router_layer == 0:
            if embedding is None:
                raise ConfigError("layer-0 router features need the input embedding")
            rows.append(
                embedding_features(
                    embedding, batch["input_ids"], batch["attention_mask"], config.router_features
                )
            )
        else:
            if model is None:
                raise ConfigError("router features past layer 0 need the dense model")
            device = next(model.parameters()).device
            rows.append(
                hidden_features(
                    model,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    config.router_layer,
                    config.router_features,
                ).cpu()
            )
    return torch.cat(rows)


def _dense_model(skeleton: _Skeleton, dense: dict[str, Tensor], device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model: torch.nn.Module = AutoModelForCausalLM.from_config(skeleton.config)  # type: ignore[no-untyped-call,unused-ignore]
    missing, unexpected = model.load_state_dict(dense, strict=False)
    tied = skeleton.vocabulary_keys
    if unexpected or any(key not in tied for key in missing):
        raise CheckpointError(f"the dense model's tensors do not fit its config: missing {missing[:3]}")
    model.tie_weights()  # type: ignore[operator]
    return model.to(device).eval()


def _folder_bytes(folder: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern) if path.is_file())


def _router(
    prompts: Mapping[str, Sequence[str]],
    tasks: Sequence[str],
    tokenizer: Any,
    *,
    config: MediatorConfig,
    embedding: Tensor | None,
    dense: tuple[_Skeleton, dict[str, Tensor]],
    device: torch.device,
) -> tuple[Router, float | None]:
    """Train the router on every task's prompts.

    The features come from the dense embedding, or past layer 0 from the dense model built from ``dense``.
    """
    model = _dense_model(*dense, device) if config.router_layer > 0 else None
    labels = torch.tensor([index for index, task in enumerate(tasks) for _ in prompts[task]])
    texts = [text for task in tasks for text in prompts[task]]
    features = prompt_features(texts, tokenizer, config, embedding=embedding, model=model)
    return train_router(features.to(device), labels.to(device), len(tasks), config)


def _check_inputs(
    base: PathLike,
    experts: Mapping[str, PathLike],
    task_prompts: Mapping[str, Sequence[str]],
    config: MediatorConfig,
) -> tuple[list[str], dict[str, list[str]], list[str], _Skeleton]:
    """Check everything compile_mediator reads before it writes: (tasks, prompts, input paths, skeleton)."""
    from paperpack.r_tsvm import get_method

    if not isinstance(config, MediatorConfig):
        raise TypeError(f"`config` must be a MediatorConfig, got {type(config).__name__}")
    tasks = check_task_names(experts)
    prompts = _check_prompts(task_prompts, tasks)
    _check_paths(base, experts)
    get_method(config.dense_method).check_inputs(has_base=True, count=len(tasks), has_statistics=False)
    skeleton = _skeleton(base)
    if config.router_layer > skeleton.num_layers:
        raise ConfigError(
            f"`router_layer` must be at most the model's {skeleton.num_layers} decoder layers, got "
            f"{config.router_layer}"
        )
    return tasks, prompts, [os.fspath(base), *(os.fspath(path) for path in experts.values())], skeleton


def compile_mediator(
    base: PathLike,
    experts: Mapping[str, PathLike],
    task_prompts: Mapping[str, Sequence[str]],
    config: MediatorConfig,
    output: PathLike,
    *,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_shard_size: int | str = "5GB",
    routed_units: Sequence[str] | None = None,
) -> MediatorReport:
    """Compile experts fine-tuned from one base into a Mediator folder (the layout: the module docstring).

    Args:
        base: θ_0, a transformers model folder (its config and tokenizer go to the dense model).
        experts: task name → a model folder or a PEFT LoRA adapter folder on ``base``; at least two.
        task_prompts: task name → prompts of that task, for the router (every expert needs two or more).
        config: the :class:`MediatorConfig`.
        output: the output folder: new, empty, or (with ``overwrite``) an earlier compiled folder.
        overwrite: replace an earlier output of ``merge-router compile``.
        device: where the arithmetic and the router training run.
        progress: show progress bars over tensors.
        max_shard_size: the dense model's shard size.
        routed_units: route exactly these units (names as :func:`layer_conflicts` gives them) instead of
            the ones the threshold rule picks: for ablations such as routing random layers at the same
            cost. None (the default) applies ``config``'s rule.

    Returns:
        A :class:`MediatorReport`.

    Raises:
        ConfigError: for bad task names, missing prompts, or a dense method that cannot merge n experts.
        CheckpointNotFoundError: for a missing folder.
        CheckpointError: for experts of another architecture or shapes (before anything is written).
        OutputExistsError: when ``output`` is taken.

    Examples:
        >>> from paperpack.merge_router import MediatorConfig, compile_mediator
        >>> report = compile_mediator(  # doctest: +SKIP
        ...     "base", {"math": "expert-math", "code": "expert-code"},
        ...     {"math": ["Q: 2 + 3 =", ...], "code": ["def add(a, b):", ...]},
        ...     MediatorConfig(), "mediator",
        ... )
    """
    from paperpack.r_tsvm import get_method

    tasks, prompts, inputs, skeleton = _check_inputs(base, experts, task_prompts, config)
    target = check_output(output, command=COMPILE_COMMAND, overwrite=overwrite, inputs=inputs, flag="output")
    method = get_method(config.dense_method)
    method_config = config.dense_method_config()
    averaging = get_method("linear")
    tokenizer = _load_tokenizer(base)
    run_device = resolve_device(device)

    conflicts = layer_conflicts(base, experts, config, device=run_device, progress=progress)
    routed = _routed(conflicts, config, routed_units)
    logger.info("routing %d of %d units: %s", len(routed), len(conflicts), routed)

    routed_keys: list[str] = []
    routed_parameters = total_parameters = 0
    embedding: Tensor | None = None
    dense_state: dict[str, Tensor] = {}
    with ExitStack() as stack:
        writer = stack.enter_context(
            StateDictWriter(
                target,
                max_shard_size=max_shard_size,
                command=COMPILE_COMMAND,
                overwrite=overwrite,
                inputs=inputs,
            )
        )
        staging = writer.staging_dir
        (staging / EXPERTS_FOLDER).mkdir()
        sparse = {
            task: stack.enter_context(StateDictWriter(staging / expert_file(task), command=COMPILE_COMMAND))
            for task in tasks
        }
        groups = walk_experts(base, experts, device=run_device)
        for group in tqdm(groups, desc="compiling", unit="tensor", disable=not progress):
            key, theta0 = group.key, group.base
            if theta0 is None:  # walk_experts always passes the base
                raise CheckpointError(f"no base tensor for {key!r}")
            if not theta0.is_floating_point():
                writer.add(key, theta0)
                continue
            total_parameters += theta0.numel()
            if unit_of(key, config.unit) in routed:
                dense = method(theta0, group.tensors, config=method_config, key=key).to(theta0.dtype)
                _write_sparse(key, dense, dict(zip(tasks, group.tensors, strict=True)), sparse, config)
                routed_keys.append(key)
                routed_parameters += theta0.numel()
            else:
                dense = averaging(None, group.tensors).to(theta0.dtype)
            dense = dense.cpu()
            writer.add(key, dense)
            if key == skeleton.embedding_key:
                embedding = dense
            if config.router_layer > 0:
                dense_state[key] = dense
        copy_model_files(base, staging)
        router, accuracy = _router(
            prompts,
            tasks,
            tokenizer,
            config=config,
            embedding=embedding,
            dense=(skeleton, dense_state),
            device=run_device,
        )
        save_router(router, staging / EXPERTS_FOLDER / ROUTER_FILE)
        description = {
            "format_version": FORMAT_VERSION,
            "tasks": tasks,
            "routed_units": routed,
            "routed_keys": routed_keys,
            "conflicts": conflicts,
            "threshold": config.resolved_threshold,
            "config": dataclasses.asdict(config),
            "router": router_metadata(router, config),
            "router_accuracy": accuracy,
            "base_model": os.fspath(base),
            "experts": {task: os.fspath(path) for task, path in experts.items()},
        }
        (staging / CONFIG_NAME).write_text(json.dumps(description, indent=2) + "\n")
    return MediatorReport(
        output=target,
        tasks=tasks,
        conflicts=conflicts,
        routed_units=routed,
        routed_keys=routed_keys,
        routed_parameters=routed_parameters,
        total_parameters=total_parameters,
        router_accuracy=accuracy,
        **_storage(target),
    )


def _routed(conflicts: Mapping[str, float], config: MediatorConfig, units: object) -> list[str]:
    """The routed units: ``config``'s rule among the units inside the blocks, or ``units`` when given."""
    if units is None:
        routable = [unit for unit in conflicts if config.route_embeddings or in_block(unit)]
        return select_routed(conflicts, config, routable)
    if isinstance(units, str) or not isinstance(units, Sequence):
        raise ConfigError(f"`routed_units` must be a list of unit names, got {units!r}")
    unknown = [unit for unit in units if unit not in conflicts]
    if unknown:
        raise ConfigError(
            f"`routed_units` names {unknown[0]!r}, which is not a unit of the model; its units are "
            f"{', '.join(conflicts)}"
        )
    return [unit for unit in conflicts if unit in units]


def _write_sparse(
    key: str, dense: Tensor, tensors: Mapping[str, Tensor], writers: Mapping[str, Any], config: MediatorConfig
) -> None:
    """S_i = TopK(θ_i − D, δ) of one routed tensor, added to each task's sparse expert file."""
    for task, tensor in tensors.items():
        indices, values = extract_sparse(tensor, dense, config.sparse_density)
        writers[task].add(key + INDEX_SUFFIX, indices.cpu())
        writers[task].add(key + VALUE_SUFFIX, values.cpu())


def _storage(folder: Path) -> dict[str, int]:
    """The report's byte counts of a compiled folder."""
    return {
        "storage_bytes": _folder_bytes(folder, "**/*"),
        "dense_bytes": _folder_bytes(folder, "*.safetensors"),
        "sparse_bytes": _folder_bytes(folder / EXPERTS_FOLDER, "experts-*.safetensors"),
        "router_bytes": _folder_bytes(folder / EXPERTS_FOLDER, ROUTER_FILE),
    }
