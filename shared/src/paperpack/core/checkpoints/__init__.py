"""Tensors on disk, safetensors only: lazy reads, atomic sharded writes, and streaming merges.

- :class:`LazyStateDict` reads a ``.safetensors`` file, a sharded folder or a model folder one tensor at a
  time; listing its keys reads no tensor data.
- :func:`load_state_dict` / :func:`save_state_dict` load and save whole state dicts; saves are sharded with
  an index when over ``max_shard_size`` and appear atomically.
- :class:`StateDictWriter` writes tensor by tensor, holding one tensor in memory.
- :func:`stream_state_dicts` walks N checkpoints key by key and writes ``fn(key, tensors)`` as it goes.

Pickle files (``.bin``, ``.pt``) are refused with instructions to convert them.
"""

from paperpack.core.checkpoints.reader import PICKLE_SUFFIXES, LazyStateDict, PathLike, load_state_dict
from paperpack.core.checkpoints.streaming import (
    MODEL_FILES,
    StreamFn,
    check_compatible,
    copy_model_files,
    stream_state_dicts,
)
from paperpack.core.checkpoints.writer import StateDictWriter, parse_size, save_state_dict
from paperpack.core.files import check_output_path

__all__ = [
    "MODEL_FILES",
    "PICKLE_SUFFIXES",
    "LazyStateDict",
    "PathLike",
    "StateDictWriter",
    "StreamFn",
    "check_compatible",
    "check_output_path",
    "copy_model_files",
    "load_state_dict",
    "parse_size",
    "save_state_dict",
    "stream_state_dicts",
]
