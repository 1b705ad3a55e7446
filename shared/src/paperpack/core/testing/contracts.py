"""Contract checks that every package's tests reuse: equality of state dicts, resume, clean failure, DDP.

``StopAtStep`` and ``check_callback_resume`` need transformers and are imported on first use, so a package
that only needs the light checks does not pay for importing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from paperpack.core.testing.plugin import OFFLINE_ENV

__all__ = [
    "assert_no_partial_output",
    "assert_state_dicts_equal",
    "assert_states_equal",
    "check_fails_cleanly",
    "check_state_dict_round_trip",
    "run_distributed",
]


def _prefixed(prefix: str) -> Callable[[str], str]:
    def message(detail: str) -> str:
        return f"{prefix}: {detail}"

    return message


def assert_state_dicts_equal(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> None:
    """Assert two state dicts have the same keys, dtypes, shapes and values (exactly, by default)."""
    assert set(actual) == set(expected), f"keys differ: {sorted(set(actual) ^ set(expected))[:5]}"
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, (
            f"{key}: {actual[key].dtype} != {expected[key].dtype}"
        )
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=rtol, msg=_prefixed(key))


def assert_states_equal(actual: Any, expected: Any, path: str = "state") -> None:
    """Assert two nested callback states (dicts, lists, tensors, JSON values) are equal, tensors exactly."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected a tensor, got {type(actual).__name__}"
        torch.testing.assert_close(
            actual.cpu(), expected.cpu(), atol=0.0, rtol=0.0, msg=lambda m: f"{path}: {m}"
        )
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{path}: expected a mapping, got {type(actual).__name__}"
        assert set(actual) == set(expected), f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            assert_states_equal(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple), f"{path}: expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{path}: lengths differ: {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_states_equal(a, e, f"{path}/{i}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_no_partial_output(path: str | os.PathLike[str]) -> None:
    """Assert nothing exists at ``path`` and no temporary sibling was left behind."""
    target = Path(path)
    assert not target.exists(), f"{target} exists after a failed write"
    leftovers = (
        [p.name for p in target.parent.glob(f".{target.name}.paperpack-*")] if target.parent.exists() else []
    )
    assert not leftovers, f"temporary files left beside {target}: {leftovers}"


def check_state_dict_round_trip(
    state: Mapping[str, torch.Tensor],
    tmp_path: Path,
    *,
    save: Callable[..., Path] | None = None,
    load: Callable[[Path], Mapping[str, torch.Tensor]] | None = None,
) -> None:
    """Check that ``state`` survives a save and a load exactly, as one file, a folder and a sharded folder.

    ``save(state, path, max_shard_size=...)`` and ``load(path)`` default to the core's ``save_state_dict``
    and ``load_state_dict``; pass a package's own pair to check it.
    """
    from paperpack.core.checkpoints import load_state_dict, save_state_dict

    save = save or save_state_dict
    load = load or load_state_dict
    smallest = min((t.numel() * t.element_size() for t in state.values()), default=1)
    layouts: dict[str, int | str] = {"file.safetensors": "5GB", "folder": "5GB", "sharded": max(smallest, 1)}
    for name, shard_size in layouts.items():
        path = save(state, tmp_path / name, max_shard_size=shard_size)
        assert_state_dicts_equal(load(path), state)


def _snapshot(paths: Iterable[str | os.PathLike[str]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for item in paths:
        root = Path(item)
        for file in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(file)] = file.read_bytes()
    return files


def check_fails_cleanly(
    call: Callable[[], object],
    error: type[BaseException],
    match: str,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    output: str | os.PathLike[str] | None = None,
) -> BaseException:
    """Check that ``call()`` raises ``error`` with a message matching ``match`` and leaves no trace.

    The files under ``inputs`` must be byte-for-byte unchanged, and nothing may exist at ``output`` (nor a
    temporary sibling of it).

    Returns:
        The exception, for further checks.
    """
    paths = list(inputs)
    before = _snapshot(paths)
    with pytest.raises(error, match=match) as raised:
        call()
    assert _snapshot(paths) == before, "an input was modified"
    if output is not None:
        assert_no_partial_output(output)
    return raised.value


def run_distributed(
    script: str | os.PathLike[str], *args: str, num_processes: int = 2, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` under ``accelerate launch --multi_gpu --num_processes N`` on the CPU (gloo), offline.

    CUDA is hidden from the processes, so the launch is a CPU data-parallel run on any machine; accelerate's
    ``--cpu`` flag would start a single process. Inside the script, build the Trainer's arguments with
    :func:`paperpack.core.hf.training_args` (``use_cpu=True`` without CUDA) or create
    ``accelerate.PartialState(cpu=True)``: a bare ``PartialState()`` with CUDA hidden reports one process.

    Raises:
        AssertionError: with the captured output, when the launch fails.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert result.returncode == 0, (
        f"accelerate launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def __getattr__(name: str) -> Any:
    if name in {"StopAtStep", "check_callback_resume"}:
        from paperpack.core.testing import resume

        return getattr(resume, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
