r"""Headless plots for demos and experiments, in one style, written atomically.

No global state is touched: no ``matplotlib.use``, no ``pyplot``. Each figure is a
``matplotlib.figure.Figure`` with its own Agg canvas, so plotting works with no display, in threads, and in a
process whose backend the user chose. A PNG appears under its final name only once it is complete
(:func:`paperpack.core.files.atomic_path`).

Two ways in:

- :func:`line_plot` and :func:`bar_plot` write a whole figure in one call (the common cases: curves over steps
  with a mean ± std band across seeds, and a bar per method with error bars);
- :func:`figure_file` yields the axes of a figure of one or more panels, for anything else; draw on them with
  :func:`plot_mean_band`, :func:`plot_bars`, :func:`plot_points` or matplotlib's own ``Axes`` methods, and
  finish each with :func:`style_axes`.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from paperpack.core.plotting import line_plot
    >>> path = Path(tempfile.mkdtemp()) / "loss.png"
    >>> runs = {"method": [[3.0, 2.0, 1.5, 1.2], [3.1, 2.2, 1.4, 1.1]], "baseline": [[3.0, 2.5, 2.2, 2.0]]}
    >>> line_plot(path, runs, xlabel="step", ylabel="loss", smooth=2).read_bytes()[:4]
    b'\x89PNG'
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from paperpack.core.errors import ConfigError
from paperpack.core.files import atomic_path
from paperpack.core.stats import MeanStd, smooth

__all__ = [
    "bar_plot",
    "figure_file",
    "line_plot",
    "plot_bars",
    "plot_mean_band",
    "plot_points",
    "style_axes",
]

#: Resolution of every written figure.
DPI = 110
_SIZE = (6.4, 4.0)

Band = Literal["std", "se"]


@contextmanager
def figure_file(
    path: str | os.PathLike[str], *, panels: int = 1, size: tuple[float, float] | None = None, dpi: int = DPI
) -> Iterator[list[Any]]:
    """Yield the axes of a new figure (``panels`` side by side); write it to ``path`` when the block ends.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``). Parent folders are created. When the
    block raises, nothing is written.

    Args:
        path: the file to write.
        panels: axes side by side.
        size: the figure's size in inches (default 6.4 x 4.0 per panel).
        dpi: the resolution of raster formats.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.plotting import figure_file, plot_bars, style_axes
        >>> path = Path(tempfile.mkdtemp()) / "two.png"
        >>> with figure_file(path, panels=2) as (left, right):
        ...     plot_bars(left, ["a", "b"], [0.9, 0.8], errors=[0.01, 0.02], horizontal=True)
        ...     style_axes(left, xlabel="accuracy")
        ...     plot_bars(right, ["1", "2", "3"], [0.1, 0.5, 0.4], colors=["red", "green", "blue"])
        ...     style_axes(right, xlabel="snapshot", ylabel="probability", legend=False)
        >>> path.is_file()
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(panels, bool) or not isinstance(panels, int) or panels < 1:
        raise ConfigError(f"`panels` must be an integer >= 1, got {panels!r}")
    width, height = size or (_SIZE[0] * panels, _SIZE[1])
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    yield axes
    target = Path(path)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=dpi, format=target.suffix.lstrip(".") or "png")


def style_axes(
    axes: Any,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    legend: bool = True,
    log_y: bool = False,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Label an axes and give it the house style: a light grid, a small legend when something is labelled."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    if log_y:
        axes.set_yscale("log")
    if xlim is not None:
        axes.set_xlim(*xlim)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(alpha=0.3)
    if legend and axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")


def _runs(label: str, values: ArrayLike) -> np.ndarray[Any, np.dtype[np.float64]]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except ValueError:
        array = np.empty((0, 0))  # ragged: reported below
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ConfigError(
            f"series {label!r} must be a curve or a list of curves (one per seed) of equal length"
        )
    return array


def plot_mean_band(
    axes: Any,
    runs: ArrayLike,
    *,
    label: str,
    x: ArrayLike | None = None,
    band: Band | None = "std",
    smooth_window: int = 1,
    marker: str | None = None,
    color: str | None = None,
) -> None:
    """Draw the mean of ``runs`` (one curve per seed) as a line, with a band of one std or standard error.

    Args:
        axes: where to draw.
        runs: a curve, or curves of equal length (seeds x steps).
        label: the legend entry.
        x: the steps (default 1, 2, ...).
        band: ``"std"`` (spread across seeds), ``"se"`` (standard error of the mean), or None; no band for
            one curve.
        smooth_window: moving-average window applied to each curve first
            (:func:`paperpack.core.stats.smooth`); the smoothed points sit at the end of their window.
        marker: a matplotlib marker for each point (``"o"``), for short curves.
        color: the line's color (default: the next in the cycle).
    """
    raw = _runs(label, runs)
    curves = smooth(raw, smooth_window)
    steps = np.arange(1, raw.shape[1] + 1) if x is None else np.asarray(x, dtype=np.float64)
    steps = steps[len(steps) - curves.shape[1] :]
    mean = curves.mean(axis=0)
    (line,) = axes.plot(steps, mean, label=label, linewidth=1.5, marker=marker, color=color)
    if band is not None and curves.shape[0] > 1:
        spread = curves.std(axis=0, ddof=1)
        if band == "se":
            spread = spread / np.sqrt(curves.shape[0])
        axes.fill_between(steps, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_bars(
    axes: Any,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    errors: Sequence[float] | None = None,
    horizontal: bool = False,
    colors: Sequence[str] | str | None = None,
) -> None:
    """Draw one bar per label (top to bottom when ``horizontal``), with error bars when ``errors`` are set."""
    if len(labels) != len(values) or (errors is not None and len(errors) != len(values)):
        raise ConfigError("`labels`, `values` and `errors` must have one entry per bar")
    if horizontal:
        axes.barh(list(labels), list(values), xerr=errors, color=colors, capsize=3 if errors else 0)
        axes.invert_yaxis()
    else:
        axes.bar(list(labels), list(values), yerr=errors, color=colors, capsize=3 if errors else 0)


def plot_points(
    axes: Any,
    points: Mapping[str, tuple[float, float]],
    *,
    connect: bool = False,
    marker: str = "o",
) -> None:
    """Draw labelled points (a trade-off: accuracy against cost, one point per method or setting).

    Args:
        axes: where to draw.
        points: label -> (x, y).
        connect: join the points in the given order (a sweep over one knob).
        marker: the marker of each point.
    """
    xs = [x for x, _ in points.values()]
    ys = [y for _, y in points.values()]
    if connect:
        axes.plot(xs, ys, linewidth=1, alpha=0.6, color="tab:gray")
    axes.scatter(xs, ys, marker=marker, zorder=3)
    for label, (x, y) in points.items():
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")


def line_plot(
    path: str | os.PathLike[str],
    series: Mapping[str, ArrayLike],
    *,
    x: ArrayLike | None = None,
    xlabel: str,
    ylabel: str,
    title: str = "",
    band: Band | None = "std",
    smooth: int = 1,
    log_y: bool = False,
    ylim: tuple[float, float] | None = None,
    marker: str | None = None,
    size: tuple[float, float] | None = None,
) -> Path:
    """Write a figure of one line per series: the mean over seeds with a band (see :func:`plot_mean_band`).

    Args:
        path: the file to write (``.png``).
        series: label -> a curve or curves (seeds x steps).
        x: the steps shared by every series (default 1, 2, ...).
        xlabel: the x axis label.
        ylabel: the y axis label (say "mean ± std over N seeds" where it applies).
        title: the figure's title.
        band: ``"std"``, ``"se"`` or None.
        smooth: moving-average window.
        log_y: a logarithmic y axis.
        ylim: the y range.
        marker: a marker per point, for short curves.
        size: the figure's size in inches.

    Returns:
        ``path``.
    """
    with figure_file(path, size=size) as (axes,):
        for label, runs in series.items():
            plot_mean_band(axes, runs, label=label, x=x, band=band, smooth_window=smooth, marker=marker)
        style_axes(axes, xlabel=xlabel, ylabel=ylabel, title=title, log_y=log_y, ylim=ylim)
    return Path(path)


def bar_plot(
    path: str | os.PathLike[str],
    values: Mapping[str, float | MeanStd],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    horizontal: bool = True,
    colors: Sequence[str] | str | None = None,
    limits: tuple[float, float] | None = None,
    size: tuple[float, float] | None = None,
) -> Path:
    """Write a figure of one bar per entry; a :class:`~paperpack.core.stats.MeanStd` gets its std as error.

    Horizontal bars (the default) list the entries top to bottom and fit long method names.

    Args:
        path: the file to write.
        values: label -> value, or mean ± std.
        xlabel: the x axis label.
        ylabel: the y axis label.
        title: the figure's title.
        horizontal: bars along x, labels down the y axis.
        colors: one color, or one per bar.
        limits: the value axis range.
        size: the figure's size (default: grows with the number of horizontal bars).

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.plotting import bar_plot
        >>> from paperpack.core.stats import mean_std
        >>> path = Path(tempfile.mkdtemp()) / "accuracy.png"
        >>> scores = {"SeWA": mean_std([0.91, 0.93]), "LAWA": mean_std([0.90, 0.92]), "last": 0.85}
        >>> bar_plot(path, scores, xlabel="test accuracy (mean ± std)").is_file()
        True
    """
    labels = list(values)
    means = [v.mean if isinstance(v, MeanStd) else float(v) for v in values.values()]
    spreads = [v.std if isinstance(v, MeanStd) else 0.0 for v in values.values()]
    errors = spreads if any(spreads) else None
    default = (7.0, 0.32 * len(labels) + 1.2) if horizontal else (max(6.4, 0.6 * len(labels)), 4.0)
    with figure_file(path, size=size or default) as (axes,):
        plot_bars(axes, labels, means, errors=errors, horizontal=horizontal, colors=colors)
        style_axes(
            axes,
            xlabel=xlabel,
            ylabel=ylabel,
            title=title,
            legend=False,
            xlim=limits if horizontal else None,
            ylim=None if horizontal else limits,
        )
    return Path(path)
