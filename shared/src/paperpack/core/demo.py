"""What a package's demo returns, and the runner behind ``paperpack demo``.

A package registers ``run_demo(ctx: DemoContext) -> DemoReport`` in the entry-point group
``paperpack.demos``. The runner gives each demo its own output folder, runs it, and gathers every
:class:`Claim` into one table: the method beside its baselines, the paper's claimed direction, and whether it
held here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from paperpack.core.device import seed_everything
from paperpack.core.errors import ConfigError
from paperpack.core.files import atomic_write_text

__all__ = [
    "Claim",
    "DemoContext",
    "DemoFn",
    "DemoReport",
    "DemoRun",
    "DemoTable",
    "format_claims",
    "run_demos",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DemoContext:
    """What a demo is given.

    Attributes:
        name: the demo's registered name.
        output_dir: the demo's own folder (it exists); plots and files go here.
        quick: finish in well under a minute on two CPU cores (fewer seeds, steps, rounds).
        seed: the base seed; a demo over several seeds uses ``seed, seed + 1, ...``.
    """

    name: str
    output_dir: Path
    quick: bool
    seed: int

    def progress(self, iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
        """Wrap ``iterable`` in a nested progress bar that disappears when done."""
        yield from tqdm(iterable, desc=f"{self.name}: {desc}", total=total, leave=False, position=1)


@dataclass
class Claim:
    """One direction the paper claims, checked on the demo's data.

    Attributes:
        claim: the direction in words, e.g. "SeWA's test accuracy >= LAWA's".
        method: the paper's method as run, e.g. "SeWA (k=3)".
        baselines: what it is compared with, e.g. "LAWA (k=3)".
        metric: what the values measure, e.g. "test accuracy, mean of 5 seeds".
        method_value: the method's value.
        baseline_value: the (best) baseline's value.
        held: whether the direction held here; None when it is only reported, not asserted.
        note: anything a reader needs to interpret the row.
    """

    claim: str
    method: str
    baselines: str
    metric: str
    method_value: float
    baseline_value: float
    held: bool | None
    note: str = ""


@dataclass
class DemoTable:
    """A results table of a demo (written to ``results.md``)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class DemoReport:
    """What a demo returns: its claims, result tables, plots (inside ``ctx.output_dir``) and notes."""

    title: str
    claims: list[Claim]
    tables: list[DemoTable] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


DemoFn = Callable[[DemoContext], DemoReport]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _held(held: bool | None) -> str:
    return "reported" if held is None else ("yes" if held else "NO")


_CLAIM_COLUMNS = [
    "package",
    "method",
    "baselines",
    "metric",
    "method",
    "baseline",
    "claimed direction",
    "held",
]


def _claim_rows(reports: dict[str, DemoReport]) -> list[list[str]]:
    return [
        [
            name,
            claim.method,
            claim.baselines,
            claim.metric,
            _format_value(claim.method_value),
            _format_value(claim.baseline_value),
            claim.claim,
            _held(claim.held),
        ]
        for name, report in reports.items()
        for claim in report.claims
    ]


def format_claims(reports: dict[str, DemoReport]) -> str:
    """Render every claim as one plain-text table for the terminal."""
    rows = [_CLAIM_COLUMNS, *_claim_rows(reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_CLAIM_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return _format_value(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def _markdown(run: DemoRun, output: Path, quick: bool) -> str:
    lines = ["# paperpack demo results", "", f"Mode: {'quick' if quick else 'full'}.", ""]
    lines += _markdown_table(_CLAIM_COLUMNS, _claim_rows(run.reports))
    lines += [f"\n**{name} failed**: {error}" for name, error in run.failures.items()]
    for name, report in run.reports.items():
        lines += ["", f"## {name}: {report.title}", "", f"Run time: {run.seconds[name]:.0f} s.", ""]
        for table in report.tables:
            lines += [f"### {table.title}", "", *_markdown_table(table.columns, table.rows), ""]
        lines += [f"![{plot.stem}]({plot.relative_to(output).as_posix()})" for plot in report.plots]
        lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


@dataclass
class DemoRun:
    """What ``paperpack demo`` ran: reports of the demos that finished, errors of those that failed."""

    reports: dict[str, DemoReport]
    failures: dict[str, str]
    seconds: dict[str, float]


def _check_report(name: str, report: object, folder: Path) -> DemoReport:
    if not isinstance(report, DemoReport):
        raise ConfigError(f"demo {name!r} returned {type(report).__name__}, not a DemoReport")
    plots = [(plot if plot.is_absolute() else folder / plot).resolve() for plot in report.plots]
    outside = [str(plot) for plot in plots if not plot.is_relative_to(folder)]
    missing = [str(plot) for plot in plots if not plot.is_file()]
    if outside or missing:
        raise ConfigError(
            f"demo {name!r} reports plots outside its folder or missing: {', '.join(outside + missing)}"
        )
    report.plots = plots
    return report


def run_demos(demos: dict[str, DemoFn], output: Path, *, quick: bool = False, seed: int = 0) -> DemoRun:
    """Run each demo into ``output/<name>/`` and write ``results.json`` and ``results.md``.

    A demo that raises is logged with its traceback and recorded as failed; the others still run.

    Returns:
        The reports of the demos that finished and the errors of those that failed.
    """
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    run = DemoRun(reports={}, failures={}, seconds={})
    bar = tqdm(demos.items(), desc="paperpack demo", unit="demo", position=0)
    for name, demo in bar:
        bar.set_postfix_str(name)
        folder = output / name
        folder.mkdir(exist_ok=True)
        seed_everything(seed)
        started = time.perf_counter()
        try:
            report = _check_report(
                name, demo(DemoContext(name=name, output_dir=folder, quick=quick, seed=seed)), folder
            )
        except Exception as error:  # one broken demo must not lose the others' results
            logger.exception("demo %r failed", name)
            run.failures[name] = f"{type(error).__name__}: {error}"
            continue
        finally:
            run.seconds[name] = time.perf_counter() - started
        run.reports[name] = report
    payload = {
        "quick": quick,
        "seed": seed,
        "failures": run.failures,
        "demos": {
            name: {
                **asdict(report),
                "plots": [str(p.relative_to(output)) for p in report.plots],
                "seconds": run.seconds[name],
            }
            for name, report in run.reports.items()
        },
    }
    atomic_write_text(output / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(output / "results.md", _markdown(run, output, quick))
    return run
