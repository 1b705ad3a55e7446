"""What a package's demo returns, and the runner behind ``paperpack demo``.

A package registers ``run_demo(ctx: DemoContext) -> DemoReport`` in the entry-point group
``paperpack.demos``. The runner gives each demo its own output folder, runs it, and gathers every
:class:`Claim` into one table: the method beside its baselines, the paper's claimed direction, and whether it
held here.

The pattern (ma-osma's): a public ``experiment.py`` runs the experiment and returns typed results
(dataclasses, no tuples or string-keyed dicts read by index); ``demo.py`` stays short and only turns them into
:class:`DemoTable` rows, plots (:mod:`paperpack.core.plotting`) and :class:`Claim` verdicts
(:mod:`paperpack.core.stats`). The scale is a parameter, :attr:`DemoContext.scale`, read with
:meth:`DemoContext.pick`; the runner, not the demo, limits torch to one thread (:func:`single_thread`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from tqdm.auto import tqdm

from paperpack.core.device import seed_everything
from paperpack.core.errors import ConfigError
from paperpack.core.files import atomic_write_text

__all__ = [
    "SCALES",
    "Claim",
    "DemoContext",
    "DemoFn",
    "DemoReport",
    "DemoRun",
    "DemoTable",
    "Scale",
    "execute_demo",
    "format_claims",
    "run_demos",
    "single_thread",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How much a demo runs: ``quick`` is a smoke run of fewer seeds and steps (seconds to several minutes on two
#: CPU cores; each package's results page gives its time; its verdicts often only reported); ``full`` is what
#: a package's results page reports.
Scale = Literal["quick", "full"]
SCALES: tuple[Scale, ...] = get_args(Scale)


@dataclass(frozen=True)
class DemoContext:
    """What a demo is given.

    Attributes:
        name: the demo's registered name.
        output_dir: the demo's own folder (it exists); plots and files go here.
        scale: ``"quick"`` or ``"full"`` (see :data:`Scale`); read it with :meth:`pick`.
        seed: the base seed; a demo over several seeds uses :meth:`seeds`.

    Examples:
        >>> from pathlib import Path
        >>> from paperpack.core.demo import DemoContext
        >>> ctx = DemoContext(name="toy", output_dir=Path("."), scale="quick", seed=3)
        >>> ctx.pick(quick=150, full=1250), ctx.seeds(quick=2, full=5), ctx.quick
        (150, [3, 4], True)
    """

    name: str
    output_dir: Path
    scale: Scale
    seed: int

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"`scale` must be one of {', '.join(map(repr, SCALES))}, got {self.scale!r}")

    @property
    def quick(self) -> bool:
        """Whether this is the quick scale."""
        return self.scale == "quick"

    def pick(self, *, quick: T, full: T) -> T:
        """The value for this scale: ``rounds = ctx.pick(quick=150, full=1250)``."""
        return quick if self.scale == "quick" else full

    def seeds(self, *, quick: int, full: int) -> list[int]:
        """The seeds of a multi-seed demo at this scale: ``seed, seed + 1, ...``."""
        return [self.seed + offset for offset in range(self.pick(quick=quick, full=full))]

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
    """A results table of a demo (written to ``results.md``).

    Examples:
        >>> from paperpack.core.demo import DemoTable
        >>> table = DemoTable("accuracy", ["arm", "test accuracy"], [["SeWA", 0.91], ["LAWA", 0.9]])
        >>> table.column("test accuracy"), table.row("LAWA")["test accuracy"]
        ([0.91, 0.9], 0.9)
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        """Each row as a mapping from column name to cell (read cells by name, never by index)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """The cells of the column ``name``, top to bottom."""
        if name not in self.columns:
            raise KeyError(f"table {self.title!r} has no column {name!r}; columns: {self.columns}")
        return [record[name] for record in self.records()]

    def row(self, first_cell: Any) -> dict[str, Any]:
        """The row whose first cell is ``first_cell`` (the arm or method), by column name."""
        for record in self.records():
            if record[self.columns[0]] == first_cell:
                return record
        raise KeyError(
            f"table {self.title!r} has no row {first_cell!r}; rows: {self.column(self.columns[0])}"
        )


@dataclass
class DemoReport:
    """What a demo returns: its claims, result tables, plots (inside ``ctx.output_dir``) and notes."""

    title: str
    claims: list[Claim]
    tables: list[DemoTable] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title_start: str) -> DemoTable:
        """The one table whose title starts with ``title_start``."""
        found = [table for table in self.tables if table.title.startswith(title_start)]
        if len(found) != 1:
            titles = [table.title for table in self.tables]
            raise KeyError(f"{len(found)} tables' titles start with {title_start!r}; titles: {titles}")
        return found[0]

    def claim(self, text_start: str) -> Claim:
        """The one claim whose text starts with ``text_start``."""
        found = [claim for claim in self.claims if claim.claim.startswith(text_start)]
        if len(found) != 1:
            raise KeyError(
                f"{len(found)} claims start with {text_start!r}; claims: {[c.claim for c in self.claims]}"
            )
        return found[0]


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


def _markdown(run: DemoRun, output: Path, scale: Scale) -> str:
    lines = ["# paperpack demo results", "", f"Scale: {scale}.", ""]
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
    outside = [str(plot) for plot in plots if not plot.is_relative_to(folder.resolve())]
    missing = [str(plot) for plot in plots if not plot.is_file()]
    if outside or missing:
        raise ConfigError(
            f"demo {name!r} reports plots outside its folder or missing: {', '.join(outside + missing)}"
        )
    for table in report.tables:
        widths = {len(row) for row in table.rows}
        if widths - {len(table.columns)}:
            raise ConfigError(
                f"demo {name!r}: table {table.title!r} has {len(table.columns)} columns but rows of "
                f"{sorted(widths)} cells"
            )
    report.plots = plots
    return report


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread and no ``datasets`` progress bars; restore both after.

    Demos train tiny models, which gain nothing from intra-op threads; on a shared two-core machine the
    spinning OpenMP threads cost up to ten times more than they give (meap measured 44 ms of CPU per step with
    one thread, 626 ms with two under load). The runner applies it around every demo: no demo sets threads.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bars_variable = os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS")
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is first imported
    restore_bars = None
    try:
        from datasets.utils import logging as datasets_logging

        if datasets_logging.is_progress_bar_enabled():
            datasets_logging.disable_progress_bar()
            restore_bars = datasets_logging.enable_progress_bar
    except ImportError:  # datasets is a dependency of the core, but a demo must not fail for its bars
        pass
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if bars_variable is None:
            os.environ.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = bars_variable
        if restore_bars is not None:
            restore_bars()


def execute_demo(
    name: str, demo: DemoFn, folder: Path, *, scale: Scale = "full", seed: int = 0
) -> DemoReport:
    """Run one demo as ``paperpack demo`` does: global seeds set, one thread, its report checked.

    Args:
        name: the demo's registered name.
        demo: its ``run_demo``.
        folder: its output folder (created).
        scale: ``"quick"`` or ``"full"``.
        seed: the base seed.

    Returns:
        The report, its plots as absolute paths.

    Raises:
        ConfigError: when the demo returns something other than a :class:`DemoReport`, a plot outside its
            folder or missing, or a table whose rows do not match its columns.
    """
    folder.mkdir(parents=True, exist_ok=True)
    context = DemoContext(name=name, output_dir=folder, scale=scale, seed=seed)
    seed_everything(seed)
    with single_thread():
        return _check_report(name, demo(context), folder)


def run_demos(demos: dict[str, DemoFn], output: Path, *, scale: Scale = "full", seed: int = 0) -> DemoRun:
    """Run each demo into ``output/<name>/`` and write ``results.json`` and ``results.md``.

    A demo that raises is logged with its traceback and recorded as failed; the others still run.

    Returns:
        The reports of the demos that finished and the errors of those that failed.
    """
    if scale not in SCALES:
        raise ConfigError(f"`scale` must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    run = DemoRun(reports={}, failures={}, seconds={})
    bar = tqdm(demos.items(), desc="paperpack demo", unit="demo", position=0)
    for name, demo in bar:
        bar.set_postfix_str(name)
        started = time.perf_counter()
        try:
            report = execute_demo(name, demo, output / name, scale=scale, seed=seed)
        except Exception as error:  # one broken demo must not lose the others' results
            logger.exception("demo %r failed", name)
            run.failures[name] = f"{type(error).__name__}: {error}"
            continue
        finally:
            run.seconds[name] = time.perf_counter() - started
        run.reports[name] = report
    payload = {
        "scale": scale,
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
    atomic_write_text(output / "results.md", _markdown(run, output, scale))
    return run
