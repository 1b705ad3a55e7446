"""Contract checks that every package's tests reuse.

Equality of states, training changed the parameters, clean failure of a call or of the real command line,
demos, round trips, DDP.

These import no transformers; the Trainer resume contracts (``StopAtStep``, ``check_callback_resume``,
``check_trainer_resume``) live in :mod:`paperpack.core.testing.resume`, which imports this module (never the
other way round).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from paperpack.core.testing.plugin import OFFLINE_ENV

if TYPE_CHECKING:
    from paperpack.core.demo import DemoFn, DemoReport

__all__ = [
    "assert_no_partial_output",
    "assert_parameters_changed",
    "assert_state_dicts_equal",
    "assert_states_equal",
    "check_cli_fails_cleanly",
    "check_demo",
    "check_fails_cleanly",
    "check_state_dict_round_trip",
    "run_distributed",
    "snapshot_parameters",
    "snapshot_tree",
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


_ABSENT = "<absent>"


def snapshot_tree(paths: Iterable[str | os.PathLike[str]]) -> dict[str, bytes | str | None]:
    """Everything under ``paths``: each file's bytes, each folder (None) and each link's target, by path.

    Two snapshots compare equal exactly when nothing was written, created, removed or relinked under the
    paths, empty folders included. A path that does not exist is recorded as absent.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.testing.contracts import snapshot_tree
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a.txt").write_text("x")
        >>> before = snapshot_tree([root])
        >>> (root / "empty").mkdir()
        >>> snapshot_tree([root]) == before
        False
    """
    entries: dict[str, bytes | str | None] = {}
    for item in paths:
        root = Path(item)
        if not root.exists() and not root.is_symlink():
            entries[str(root)] = _ABSENT
            continue
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]:
            if path.is_symlink():
                entries[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                entries[str(path)] = None
            else:
                entries[str(path)] = path.read_bytes()
    return entries


def _changes(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    present_before = {path for path, value in before.items() if value != _ABSENT}
    present_after = {path for path, value in after.items() if value != _ABSENT}
    changed = [path for path in present_before & present_after if before[path] != after[path]]
    return sorted(
        [f"removed {p}" for p in present_before - present_after]
        + [f"created {p}" for p in present_after - present_before]
        + [f"changed {p}" for p in changed]
    )


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
    before = snapshot_tree(paths)
    with pytest.raises(error, match=match) as raised:
        call()
    changes = _changes(before, snapshot_tree(paths))
    assert not changes, f"the failed call changed the file system: {changes[:10]}"
    if output is not None:
        assert_no_partial_output(output)
    return raised.value


def check_cli_fails_cleanly(
    argv: Sequence[str],
    match: str,
    *,
    paths: Iterable[str | os.PathLike[str]] = (),
    output: str | os.PathLike[str] | None = None,
    status: int = 2,
) -> str:
    """Run the real ``paperpack`` command on bad input; check the status, the message and the file system.

    The command runs in this process (``paperpack.core.cli.main(argv)``), exactly as typed by a user.

    Args:
        argv: the arguments after ``paperpack``, e.g. ``["tezo", "finetune", "--model", str(model), ...]``.
        match: a regular expression the error output must contain (``re.search``).
        paths: files and folders that must be byte-for-byte unchanged: the inputs, and the parent folders
            where the output or temporary siblings might appear (folders are compared whole, empty folders and
            links included).
        output: the output path; if it did not exist before, it must not exist after, nor any temporary
            sibling of it; if it existed, it must be unchanged.
        status: the exit status expected (2: bad usage or input).

    Returns:
        What the command printed on stderr.

    Examples:
        >>> from paperpack.core.testing.contracts import check_cli_fails_cleanly
        >>> error = check_cli_fails_cleanly(["demo", "--seed", "-1"], "`--seed` must be a non-negative")
    """
    from paperpack.core.cli import main

    watched = [*paths, *([output] if output is not None else [])]
    before = snapshot_tree(watched)
    existed = output is not None and (Path(output).exists() or Path(output).is_symlink())
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = main(list(argv))
    message = stderr.getvalue()
    assert code == status, f"paperpack {' '.join(argv)} exited {code}, expected {status}; stderr:\n{message}"
    assert re.search(match, message), f"stderr does not match {match!r}:\n{message}"
    changes = _changes(before, snapshot_tree(watched))
    assert not changes, f"paperpack {' '.join(argv)} changed the file system: {changes[:10]}"
    if output is not None and not existed:
        assert_no_partial_output(output)
    return message


def snapshot_parameters(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """A copy of every named parameter and whether it is trainable, for :func:`assert_parameters_changed`."""
    return {name: (param.detach().clone(), param.requires_grad) for name, param in model.named_parameters()}


def assert_parameters_changed(
    before: Mapping[str, tuple[torch.Tensor, bool]],
    model: torch.nn.Module,
    *,
    allow_unchanged: Iterable[str] = (),
) -> None:
    """Assert training changed every trainable parameter and none of the frozen ones (TRL's canonical check).

    Args:
        before: :func:`snapshot_parameters` of the model before training.
        model: the model after training.
        allow_unchanged: regular expressions of trainable parameter names that may stay unchanged (say, an
            embedding that no token of the data reaches).

    Examples:
        >>> import torch
        >>> from paperpack.core.testing.contracts import assert_parameters_changed, snapshot_parameters
        >>> model = torch.nn.Linear(2, 2)
        >>> model.bias.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> before = snapshot_parameters(model)
        >>> with torch.no_grad():
        ...     model.weight.add_(1.0)  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> assert_parameters_changed(before, model)
    """
    patterns = [re.compile(pattern) for pattern in allow_unchanged]
    current = dict(model.named_parameters())
    assert set(current) == set(before), f"parameter names differ: {sorted(set(current) ^ set(before))[:5]}"
    trainable = [name for name, (_, grad) in before.items() if grad]
    assert trainable, "the model had no trainable parameter"
    unchanged = [
        name
        for name in trainable
        if torch.equal(current[name].detach(), before[name][0]) and not any(p.search(name) for p in patterns)
    ]
    assert not unchanged, (
        f"{len(unchanged)} of {len(trainable)} trainable parameters did not change: {unchanged[:5]}"
    )
    moved = [
        name for name, (value, grad) in before.items() if not grad and not torch.equal(current[name], value)
    ]
    assert not moved, f"frozen parameters changed: {moved[:5]}"


def _png(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(8) == b"\x89PNG\r\n\x1a\n"


def check_demo(
    run_demo: DemoFn, tmp_path: str | os.PathLike[str], *, name: str = "demo", seed: int = 0
) -> DemoReport:
    """Run a package's demo at the quick scale as ``paperpack demo --quick`` does, and check its report.

    Checked: it returns a :class:`~paperpack.core.demo.DemoReport` with at least one claim; every claim's
    values are numbers (NaN only where ``held`` is None) and its verdict is True, False or None; every table's
    rows match its columns; every plot is a PNG inside the demo's folder; nothing is written outside that
    folder; torch's thread count and matplotlib's backend are as before (the runner owns them).

    Args:
        run_demo: the demo's entry point.
        tmp_path: a folder for the demo's output (its folder is ``tmp_path/<name>``).
        name: the demo's name.
        seed: the base seed.

    Returns:
        The report, for the package's own checks (read tables by column name: ``report.table(...).row(...)``).
    """
    import matplotlib

    from paperpack.core.demo import DemoReport, execute_demo

    root = Path(tmp_path)
    outside = snapshot_tree([root])
    threads, backend = torch.get_num_threads(), matplotlib.get_backend()
    report = execute_demo(name, run_demo, root / name, scale="quick", seed=seed)
    assert torch.get_num_threads() == threads, "the demo changed torch's thread count"
    assert matplotlib.get_backend() == backend, (
        "the demo changed matplotlib's backend (use paperpack.core.plotting)"
    )
    assert isinstance(report, DemoReport)
    assert report.claims, "the demo makes no claim"
    for claim in report.claims:
        assert claim.held in (True, False, None), f"{claim.claim!r}: held is {claim.held!r}"
        for value in (claim.method_value, claim.baseline_value):
            assert isinstance(value, int | float), f"{claim.claim!r}: value {value!r} is not a number"
            assert claim.held is None or not math.isnan(value), f"{claim.claim!r}: judged on NaN"
    for plot in report.plots:
        assert _png(plot), f"{plot} is not a PNG"
    created = {path for path in snapshot_tree([root]) if path not in outside}
    stray = sorted(path for path in created if not Path(path).is_relative_to(root / name))
    assert not stray, f"the demo wrote outside its folder: {stray[:5]}"
    return report


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
