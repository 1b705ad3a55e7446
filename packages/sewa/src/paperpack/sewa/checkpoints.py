"""Average checkpoints, model folders saved on disk: the baselines by streaming, and SeWA on a causal-LM loss.

This is what ``paperpack sewa average`` runs. The baselines never hold more than a few tensors per checkpoint
(the core's ``stream_state_dicts``). SeWA needs every candidate in memory while it searches the mask (K copies
of the parameters as snapshots, as the paper's method does), then writes the mean of the selected checkpoints
by streaming. Outputs follow the core's output policy: a new or empty folder, or an earlier output of the same
command with ``overwrite=True``; nothing of the user's is replaced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from paperpack.core.checkpoints import LazyStateDict, PathLike, check_compatible, stream_state_dicts
from paperpack.core.data import CausalLMCollator, read_jsonl
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.files import check_output
from paperpack.core.hf import load_model_and_tokenizer
from paperpack.core.validation import check_int
from paperpack.sewa.averaging import Strategy, baseline_weights
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.loss import model_loss, selection_batches
from paperpack.sewa.selection import SeWAResult, select_snapshots
from paperpack.sewa.snapshots import mean_of, weighted_average

__all__ = ["AVERAGE_COMMAND", "find_checkpoints", "write_average", "write_sewa_average"]

#: The command name recorded in the outputs' marker (an earlier output of it may be replaced with overwrite).
AVERAGE_COMMAND = "sewa average"

logger = logging.getLogger(__name__)

_STEP = re.compile(r"^checkpoint-(\d+)$")


def find_checkpoints(paths: Sequence[PathLike], last_n: int | None = None) -> list[Path]:
    """The checkpoints named by ``paths``, oldest first.

    A training output (``checkpoint-<step>`` folders beside the final model, the layout every paperpack
    training command and a Trainer ``output_dir`` have) stands for its checkpoints in step order, followed by
    the final model at its top when the top holds weights that differ from the last checkpoint's (a run that
    saved at its last step has them there already). Any other path stands for itself, in the order given.

    Args:
        paths: Model folders, safetensors files, or training outputs.
        last_n: Keep only the last ``n`` (fairseq's ``--num-update-checkpoints``).

    Raises:
        CheckpointNotFoundError: a path does not exist.
        ConfigError: no path, or ``last_n`` < 1.
    """
    if not paths:
        raise ConfigError("`checkpoints` must name at least one folder, got none")
    if last_n is not None:
        check_int("last_n", last_n, minimum=1)
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
        if not steps:
            found.append(path)
            continue
        found.extend(child for _, child in steps)
        if _holds_weights(path) and not _same_tensors(path, steps[-1][1]):
            found.append(path)
    return found[-last_n:] if last_n is not None else found


def _holds_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same keys, shapes, dtypes and values (read one tensor at a time)."""
    first, second = LazyStateDict(a), LazyStateDict(b)
    if set(first) != set(second):
        return False
    return all(
        first.shape(key) == second.shape(key) and first.dtype(key) == second.dtype(key) for key in first
    ) and all(torch.equal(first[key], second[key]) for key in first)


def _weights_name(state: LazyStateDict) -> str:
    return (
        "adapter_model.safetensors"
        if state.files[0].name.startswith("adapter_model")
        else "model.safetensors"
    )


def _cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _mean(key: str, tensors: list[Tensor]) -> Tensor:
    return mean_of([{key: tensor} for tensor in tensors], range(len(tensors)))[key]


def _weighted(weights: list[float]) -> Callable[[str, list[Tensor]], Tensor]:
    def combine(key: str, tensors: list[Tensor]) -> Tensor:
        return weighted_average([{key: tensor} for tensor in tensors], weights)[key]

    return combine


def _open(checkpoints: Sequence[PathLike], output: PathLike, overwrite: bool) -> list[LazyStateDict]:
    """Check the output first (nothing is read or written when it is taken), then open the checkpoints."""
    file = Path(output).suffix == ".safetensors"
    check_output(
        output, command=AVERAGE_COMMAND, overwrite=overwrite, inputs=checkpoints, flag="output", file=file
    )
    states = [LazyStateDict(path) for path in checkpoints]
    check_compatible(states)
    return states


def _write(
    states: list[LazyStateDict],
    combine: Callable[[str, list[Tensor]], Tensor],
    output: PathLike,
    record: Mapping[str, object],
    *,
    max_shard_size: int | str,
    progress: bool,
    overwrite: bool,
) -> Path:
    """Stream ``combine`` over ``states`` into ``output``, with ``record`` under ``paperpack_sewa``.

    The config and tokenizer files come from the latest of ``states``.
    """
    return stream_state_dicts(
        states,
        combine,
        output,
        max_shard_size=max_shard_size,
        progress=progress,
        copy_files_from=len(states) - 1,
        metadata={"paperpack_sewa": json.dumps(record)},
        weights_name=_weights_name(states[-1]),
        command=AVERAGE_COMMAND,
        overwrite=overwrite,
    )


def write_average(
    checkpoints: Sequence[PathLike],
    output: PathLike,
    strategy: Strategy,
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
        output: The new folder (or ``.safetensors`` file): a new path or an empty folder; it must not be, hold
            or lie inside an input.
        strategy: ``"last"``, ``"uniform"``, ``"lawa"``, ``"ema"`` or ``"random"``
            (see ``average_snapshots``).
        k: Snapshots kept by ``"lawa"`` / ``"random"``; sets ``"ema"``'s default decay.
        decay: β of ``"ema"``.
        seed: Seed of ``"random"``.
        max_shard_size: Bytes per output shard.
        progress: Show a progress bar over tensors.
        overwrite: Replace an earlier output of ``paperpack sewa average`` at ``output``.

    Returns:
        The output path. Config and tokenizer files come from the latest checkpoint used.

    Raises:
        CheckpointError: incompatible checkpoints, or an output overlapping an input.
        ConfigError: a bad strategy, ``k`` or ``decay``.
        OutputExistsError: ``output`` is taken.
    """
    weights = baseline_weights(len(checkpoints), strategy, k, decay, seed=seed)
    states = _open(checkpoints, output, overwrite)
    used = [(state, weight) for state, weight in zip(states, weights, strict=True) if weight > 0]
    combine = _weighted([weight for _, weight in used]) if strategy == "ema" else _mean
    record = {
        "strategy": strategy,
        "checkpoints": [str(state.path) for state, _ in used],
        "weights": [weight for _, weight in used],
    }
    states = [state for state, _ in used]
    return _write(
        states, combine, output, record, max_shard_size=max_shard_size, progress=progress, overwrite=overwrite
    )


def write_sewa_average(
    checkpoints: Sequence[PathLike],
    output: PathLike,
    data: PathLike,
    config: SeWAConfig,
    *,
    max_length: int = 256,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
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
        output: The new model folder: a new path or an empty folder; it must not be, hold or lie inside an
            input.
        data: A JSON Lines file whose records have a ``"text"`` string.
        config: SeWA's hyperparameters.
        max_length: Tokens kept per text.
        batch_size: Texts per minibatch.
        device: Where the model runs (``"auto"``: CUDA when available).
        dtype: The dtype the search runs in (the model and the window of candidates). float32 by default:
            in bf16 the small differences between nearby checkpoints are quantised away (bf16 keeps 8
            significant bits). ``"auto"`` (bf16 on capable CUDA devices) halves the memory at that cost. The
            output keeps the checkpoints' dtype either way.
        max_shard_size: Bytes per output shard.
        progress: Show progress bars.
        overwrite: Replace an earlier output of ``paperpack sewa average`` at ``output``.

    Returns:
        The selection; ``result.indices`` index ``checkpoints``.

    Raises:
        CheckpointError: incompatible checkpoints, a folder that is not a model, an output overlapping an
            input.
        ConfigError: bad data or arguments.
        OutputExistsError: ``output`` is taken.
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
    model_dtype = next(model.parameters()).dtype
    target = next(model.parameters()).device
    # Parameters (tied ones once) and persistent buffers (batch norm's statistics) are averaged alike, as in
    # the output; integer buffers keep their dtype.
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    names = [name for name, _ in model.named_parameters()]
    names += [name for name in model.state_dict() if name not in parameters]
    keys = [name for name in names if name in states[0]]
    if not keys:
        raise CheckpointError(f"none of the model's parameter names appear in {states[0].path}")
    logger.info("loading %d checkpoints (%d tensors each) for the mask search", len(states), len(keys))
    snapshots = [{key: _cast(state[key], model_dtype) for key in keys} for state in states]

    collate = CausalLMCollator(tokenizer, max_length=max_length)
    batches = selection_batches(
        DataLoader(cast("Dataset[str]", texts), batch_size=batch_size, collate_fn=collate),
        batch_size,
        seed=config.seed,
    )
    model.eval()
    result = select_snapshots(
        snapshots, model_loss(model, batches, target), config, device=target, progress=progress
    )
    chosen = [states[i] for i in result.indices]
    record = {
        "strategy": "sewa",
        "checkpoints": [str(state.path) for state in states],
        "selected": result.indices,
        "probabilities": [round(p, 6) for p in result.probabilities.tolist()],
        "tie_broken": result.tie_broken,
        "search_dtype": str(model_dtype).removeprefix("torch."),
    }
    _write(
        chosen, _mean, output, record, max_shard_size=max_shard_size, progress=progress, overwrite=overwrite
    )
    return result
