"""Shared by the benchmarks: child processes measured alike, synthetic Llama checkpoints, tensor comparisons.

Every measured command runs in a fresh child process started through :data:`WRAPPER`, which runs the tool's
console script in that process and, on exit, records the process's own peak resident set size (``VmHWM`` of
``/proc/self/status``). After ``exec`` a process has a new address space, so ``VmHWM`` belongs to that process
alone; ``ru_maxrss`` from ``wait4`` does not (on Linux a child starts from the high-water mark of the parent
it was forked from), which is why it is reported only as a cross-check. The parent never loads tensors:
models are built and compared in children of their own, so it stays small too.

This module imports no torch; the children do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

#: Runs ``argv[1]`` (a console script or a Python file) with ``argv[2:]``; writes VmHWM to $PEAK_FILE at exit.
WRAPPER = """
import os, re, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    status = open("/proc/self/status").read()
    peak = int(re.search(r"^VmHWM:\\s+(\\d+) kB", status, re.MULTILINE).group(1)) * 1024
    with open(os.environ["PEAK_FILE"], "w") as handle:
        handle.write(str(peak))
"""


@dataclass
class Measured:
    """One child run: wall seconds, its own peak RSS (VmHWM), ``wait4``'s ru_maxrss, its stdout and CPU seconds.

    ``cpu`` is the child's user + system time from ``wait4`` (all its threads): unlike the wall time, it hardly
    moves with the load of a shared machine.
    """

    seconds: float
    peak: int
    maxrss: int
    stdout: str
    cpu: float = 0.0


def run_measured(python: str, script: str, args: list[str], *, env: dict[str, str] | None = None) -> Measured:
    """Run ``script`` (a console script or .py file) under ``python`` in a fresh child, measured.

    Raises:
        RuntimeError: with the child's stderr when it fails.
    """
    with tempfile.NamedTemporaryFile(suffix=".peak", delete=False) as handle:
        peak_file = handle.name
    child_env = {**os.environ, **(env or {}), "PEAK_FILE": peak_file}
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        start = time.perf_counter()
        process = subprocess.Popen(
            [python, "-c", WRAPPER, script, *args], stdout=out_file, stderr=err_file, text=True, env=child_env
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    peak = int(Path(peak_file).read_text() or 0)
    os.unlink(peak_file)
    if process.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{err[-4000:]}")
    return Measured(seconds, peak, usage.ru_maxrss * 1024, out, usage.ru_utime + usage.ru_stime)


def in_child(module_function: str, *args: str) -> str:
    """Run ``_children.py FUNCTION ARGS...`` in a child of this Python; return its stdout."""
    result = subprocess.run(
        [sys.executable, str(HERE / "_children.py"), module_function, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{module_function} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def load_json_line(text: str) -> dict:
    """The last line of a child's stdout, parsed as JSON."""
    return json.loads(text.strip().splitlines()[-1])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def format_bytes(count: float) -> str:
    """Bytes in binary units, as ``paperpack.core.device.format_bytes`` writes them.

    Not imported from there: that module imports torch, and the parent process stays without it (see the
    module's docstring).
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def llama_spec(layers: int, hidden: int, intermediate: int, vocab: int, experts: int) -> dict[str, object]:
    """The synthetic Llama of the spectral benchmarks: a base and ``experts`` fine-tunes (base + 1e-3 noise),
    as ``_children.py models`` builds it."""
    return {
        "name": f"llama-{layers}x{hidden}x{intermediate}",
        "vocab": vocab,
        "hidden": hidden,
        "intermediate": intermediate,
        "layers": layers,
        "heads": max(1, hidden // 128),
        "experts": experts,
        "noise": 1e-3,
    }
