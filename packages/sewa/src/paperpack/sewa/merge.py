"""Average saved model folders after training: the baselines by streaming, and SeWA on a causal-LM loss.

This is what ``paperpack sewa average`` runs. The baselines never hold more than a few tensors per checkpoint
(the core's ``stream_state_dicts``). SeWA needs every candidate in memory
while it searches the mask (K copies of the parameters, as the paper's method does), then writes the mean of
the selected folders by streaming.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from paperpack.core.checkpoints import LazyStateDict, PathLike, check_compatible, stream_state_dicts
from paperpack.core.data import read_jsonl
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.files import check_output
from paperpack.core.hf import load_model_and_tokenizer
from paperpack.core.validation import check_int
from paperpack.sewa.averaging import baseline_weights
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.loss import model_loss, selection_batches
from paperpack.sewa.selection import SeWAResult, select_checkpoints
from paperpack.sewa.snapshots import mean_of, weighted_average

__all__ = ["average_folders", "find_checkpoints", "sewa_folders"]

logger = logging.getLogger(__name__)

_STEP = re.compile(r"^checkpoint-(\d+)$")
_COMMAND = "sewa average"


def find_checkpoints(paths: Sequence[PathLike], last_n: int | None = None) -> list[Path]:
    """The checkpoint folders named by ``paths``, oldest first.

    A folder holding ``checkpoint-<step>`` subfolders (a Trainer ``output_dir``) stands for those subfolders
    in step order; any other path stands for itself, in the order given.

    Args:
        paths: Model folders, safetensors files, or Trainer output folders.
        last_n: Keep only the last ``n`` (fairseq's ``--num-update-checkpoints``).

    Raises:
        CheckpointNotFoundError: a path does not exist.
        ConfigError: no path, or ``last_n`` < 1.
    """
    if not paths:
        raise ConfigError("`checkpoints` must name at least one folder, got none")
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise CheckpointNotFoundError(f"checkpoint {str(item)!r} does not exist")
        steps = sorted(
            (int(match.group(1)), child)
            for child in (path.iterdir() if path.is_dir() else [])
            if child.is_dir() and (match := _STEP.match(child.name))
        )
        if steps:
            found.extend(child for _, child in steps)
        else:
            found.append(path)
    if last_n is not None:
        check_int("last_n", last_n, minimum=1)
        found = found[-last_n:]
    return found


def _weights_name(state: LazyStateDict) -> str:
    return (
        "adapter_model.safetensors"
        if state.files[0].name.startswith("adapter_model")
        else "model.safetensors"
    )


def _mean(key: str, tensors: list[Tensor]) -> Tensor:
    return mean_of([{key: tensor} for tensor in tensors], range(len(tensors)))[key]


def _weighted(weights: list[float]) -> Callable[[str, list[Tensor]], Tensor]:
    def combine(key: str, tensors: list[Tensor]) -> Tensor:
        return weighted_average([{key: tensor} for tensor in tensors], weights)[key]

    return combine


def _open(checkpoints: Sequence[PathLike], output: PathLike, overwrite: bool) -> list[LazyStateDict]:
    states = [LazyStateDict(path) for path in checkpoints]
    check_compatible(states)
    file = Path(output).suffix == ".safetensors"
    check_output(output, command=_COMMAND, overwrite=overwrite, inputs=checkpoints, flag="output", file=file)
    return states


def average_folders(
    checkpoints: Sequence[PathLike],
    output: PathLike,
    strategy: str,
    *,
    k: int | None = None,
    decay: float | None = None,
    seed: int = 0,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a baseline average of saved checkpoints (oldest first) to ``output``, tensor by tensor.

    Args:
        checkpoints: Model folders, adapter folders or safetensors files with equal keys, shapes and dtypes.
        output: The new folder (or ``.safetensors`` file); it must not be or lie inside an input.
        strategy: ``"last"``, ``"uniform"``, ``"lawa"``, ``"ema"`` or ``"random"``
            (see ``average_checkpoints``).
        k: Snapshots kept by ``"lawa"`` / ``"random"``; sets ``"ema"``'s default decay.
        decay: β of ``"ema"``.
        seed: Seed of ``"random"``.
        max_shard_size: Bytes per output shard.
        progress: Show a progress bar over tensors.
        overwrite: Replace an earlier output of ``sewa average`` at ``output`` (the core's output policy).

    Returns:
        The output path. Config and tokenizer files come from the latest checkpoint used.

    Raises:
        CheckpointError: incompatible checkpoints, or an output overlapping an input.
        OutputExistsError: ``output`` is taken (checked before anything is read).
        ConfigError: a bad strategy, ``k`` or ``decay``.
    """
    states = _open(checkpoints, output, overwrite)
    weights = baseline_weights(len(states), strategy, k, decay, seed=seed)
    used = [(state, weight) for state, weight in zip(states, weights, strict=True) if weight > 0]
    combine = _weighted([weight for _, weight in used]) if strategy == "ema" else _mean
    record = {
        "strategy": strategy,
        "checkpoints": [str(state.path) for state, _ in used],
        "weights": [weight for _, weight in used],
    }
    return stream_state_dicts(
        [state for state, _ in used],
        combine,
        output,
        max_shard_size=max_shard_size,
        progress=progress,
        copy_files_from=len(used) - 1,
        metadata={"paperpack_sewa": json.dumps(record)},
        weights_name=_weights_name(states[-1]),
        command=_COMMAND,
        overwrite=overwrite,
    )


def sewa_folders(
    checkpoints: Sequence[PathLike],
    output: PathLike,
    data: PathLike,
    config: SeWAConfig,
    *,
    max_length: int = 256,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    overwrite: bool = False,
) -> SeWAResult:
    """Select ``config.k`` of the saved causal-LM folders with SeWA and write the mean of the selected ones.

    The mask is fitted on the causal-LM loss (next-token cross-entropy, padding ignored) of the averaged
    model on the ``"text"`` field of a JSON Lines file, one minibatch of ``batch_size`` texts per Monte Carlo
    sample.

    Args:
        checkpoints: Model folders (``config.json`` plus safetensors weights), oldest first.
        output: The new model folder; it must not be or lie inside an input.
        data: A JSON Lines file whose records have a ``"text"`` string.
        config: SeWA's hyperparameters.
        max_length: Tokens kept per text.
        batch_size: Texts per minibatch.
        device: Where the model runs (``"auto"``: CUDA when available).
        dtype: The model's dtype during the search (``"auto"``: bf16 on capable CUDA devices, else float32);
            the output keeps the checkpoints' dtype.
        max_shard_size: Bytes per output shard.
        progress: Show progress bars.
        overwrite: Replace an earlier output of ``sewa average`` at ``output`` (the core's output policy).

    Returns:
        The selection; ``result.indices`` index ``checkpoints``.

    Raises:
        CheckpointError: incompatible checkpoints, a folder that is not a model, an output overlapping an
            input.
        OutputExistsError: ``output`` is taken (checked before the search).
        ConfigError: bad data or arguments.
    """
    check_int("max_length", max_length, minimum=2)
    check_int("batch_size", batch_size, minimum=1)
    states = _open(checkpoints, output, overwrite)
    if config.k > len(states):
        raise ConfigError(f"`k` must be <= the number of checkpoints ({len(states)}), got {config.k}")
    latest = Path(checkpoints[-1])
    if not (latest / "config.json").is_file():
        raise CheckpointError(
            f"strategy 'sewa' evaluates the causal-LM loss, so the checkpoints must be model folders with a "
            f"config.json; {latest} has none (for adapters, use SeWACallback during training)"
        )
    texts = [record["text"] for record in read_jsonl(data, required=("text",))]
    model, tokenizer = load_model_and_tokenizer(latest, device=device, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_dtype = next(model.parameters()).dtype
    target = next(model.parameters()).device
    keys = [name for name, _ in model.named_parameters() if name in states[0]]
    if not keys:
        raise CheckpointError(f"none of the model's parameter names appear in {states[0].path}")
    logger.info("loading %d checkpoints (%d tensors each) for the mask search", len(states), len(keys))
    snapshots = [{key: state[key].to(model_dtype) for key in keys} for state in states]

    def collate(batch: list[str]) -> dict[str, Tensor]:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": labels,
        }

    batches = selection_batches(
        DataLoader(cast("Dataset[str]", texts), batch_size=batch_size, collate_fn=collate),
        batch_size,
        seed=config.seed,
    )
    model.eval()
    result = select_checkpoints(
        snapshots, model_loss(model, batches, target), config, device=target, progress=progress
    )
    chosen = [states[i] for i in result.indices]
    record = {
        "strategy": "sewa",
        "checkpoints": [str(state.path) for state in states],
        "selected": result.indices,
        "probabilities": [round(p, 6) for p in result.probabilities.tolist()],
    }
    stream_state_dicts(
        chosen,
        _mean,
        output,
        max_shard_size=max_shard_size,
        progress=progress,
        copy_files_from=len(chosen) - 1,
        metadata={"paperpack_sewa": json.dumps(record)},
        command=_COMMAND,
        overwrite=overwrite,
    )
    return result
