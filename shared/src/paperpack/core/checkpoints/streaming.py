"""Walk N checkpoints key by key and write a combination of them as it goes."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from paperpack.core.checkpoints.reader import LazyStateDict, PathLike
from paperpack.core.checkpoints.writer import StateDictWriter
from paperpack.core.errors import CheckpointError, ConfigError

__all__ = ["MODEL_FILES", "StreamFn", "check_compatible", "copy_model_files", "stream_state_dicts"]

logger = logging.getLogger(__name__)

#: Non-weight files of a model or adapter folder that travel with its weights.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

#: ``fn(key, tensors)`` returns a tensor for ``key``, a mapping of new keys to tensors, or None to drop it.
StreamFn = Callable[[str, list[torch.Tensor]], torch.Tensor | Mapping[str, torch.Tensor] | None]


def check_compatible(states: Sequence[LazyStateDict], *, shapes: bool = True, dtypes: bool = True) -> None:
    """Check from the headers alone that checkpoints share keys (and shapes and dtypes).

    Raises:
        CheckpointError: naming the first key that differs and the checkpoints involved.
    """
    if not states:
        raise ConfigError("`inputs` must name at least one checkpoint, got none")
    first = states[0]
    for other in states[1:]:
        missing = [key for key in first if key not in other]
        extra = [key for key in other if key not in first]
        for keys, has, lacks in ((missing, first, other), (extra, other, first)):
            if keys:
                raise CheckpointError(
                    f"checkpoints have different keys: {keys[0]!r} is in {has.path} but not in {lacks.path} "
                    f"({len(keys)} such key(s))"
                )
        for key in first:
            if shapes and first.shape(key) != other.shape(key):
                raise CheckpointError(
                    f"{key!r} has shape {list(first.shape(key))} in {first.path} "
                    f"but {list(other.shape(key))} in {other.path}"
                )
            if dtypes and first.dtype(key) != other.dtype(key):
                raise CheckpointError(
                    f"{key!r} has dtype {first.dtype(key)} in {first.path} "
                    f"but {other.dtype(key)} in {other.path}"
                )


def copy_model_files(source: PathLike, target: PathLike) -> list[str]:
    """Copy the config, generation config and tokenizer files of a model folder (those present).

    Returns:
        The names of the files copied.
    """
    source, target = Path(source), Path(target)
    folder = source if source.is_dir() else source.parent
    copied = []
    for name in MODEL_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
            copied.append(name)
    return copied


def stream_state_dicts(
    inputs: Sequence[PathLike | LazyStateDict],
    fn: StreamFn,
    output: PathLike,
    *,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    copy_files_from: int | None = 0,
    metadata: Mapping[str, str] | None = None,
    weights_name: str = "model.safetensors",
    command: str = "paperpack",
    overwrite: bool = False,
) -> Path:
    """Combine N checkpoints key by key, writing each result as soon as it is computed.

    For every key of the first input, the N tensors are read, ``fn(key, tensors)`` is called, and what it
    returns is written. Peak memory is about N times the largest tensor plus ``fn``'s own work, whatever the
    size of the models. Keys, shapes and dtypes are checked from the headers before anything is written, and
    the output appears only when complete.

    Args:
        inputs: checkpoint paths (files, sharded folders, model folders) or open :class:`LazyStateDict`.
        fn: ``fn(key, tensors) -> Tensor | Mapping[str, Tensor] | None``; a tensor is stored under ``key``,
            a mapping under its own keys, and None drops the key.
        output: the output folder (or ``.safetensors`` file).
        max_shard_size: bytes per output shard.
        progress: show a tqdm bar over keys.
        copy_files_from: index of the input whose config, generation config and tokenizer files are copied
            to the output; None copies nothing.
        metadata: strings stored in the output headers.
        weights_name: the weight file name inside the output folder.
        command: the command writing the output, recorded in its marker.
        overwrite: allow replacing an earlier output of ``command``; the output holds exactly what this call
            wrote (see :class:`StateDictWriter`).

    Returns:
        The output path.

    Raises:
        CheckpointError: for mismatched keys, shapes or dtypes, or an output that is, contains or lies in an
            input.
        OutputExistsError: when ``output`` is taken (see :func:`paperpack.core.files.check_output`).

    Examples:
        >>> import tempfile, torch
        >>> from paperpack.core.checkpoints import load_state_dict, save_state_dict, stream_state_dicts
        >>> root = tempfile.mkdtemp()
        >>> a = save_state_dict({"w": torch.zeros(2)}, f"{root}/a")
        >>> b = save_state_dict({"w": torch.ones(2)}, f"{root}/b")
        >>> out = stream_state_dicts([a, b], lambda key, ts: sum(ts) / len(ts), f"{root}/avg", progress=False)
        >>> load_state_dict(out)["w"].tolist()
        [0.5, 0.5]
    """
    states = [item if isinstance(item, LazyStateDict) else LazyStateDict(item) for item in inputs]
    check_compatible(states)
    if copy_files_from is not None and not 0 <= copy_files_from < len(states):
        raise ConfigError(f"`copy_files_from` must index `inputs` (0..{len(states) - 1}) or be None")
    with StateDictWriter(
        output,
        max_shard_size=max_shard_size,
        metadata=metadata,
        weights_name=weights_name,
        command=command,
        overwrite=overwrite,
        inputs=[state.path for state in states],
    ) as writer:
        for key in tqdm(list(states[0]), desc="tensors", unit="tensor", disable=not progress):
            result = fn(key, [state[key] for state in states])
            if result is None:
                continue
            if isinstance(result, torch.Tensor):
                writer.add(key, result)
            elif isinstance(result, Mapping):
                for new_key, tensor in result.items():
                    writer.add(new_key, tensor)
            else:
                raise CheckpointError(
                    f"`fn` returned {type(result).__name__} for {key!r}; return a Tensor, a mapping or None"
                )
        if copy_files_from is not None and not writer.single_file:
            copied = copy_model_files(states[copy_files_from].path, writer.staging_dir)
            logger.info(
                "copied %s from %s", ", ".join(copied) or "no model files", states[copy_files_from].path
            )
    return writer.path
