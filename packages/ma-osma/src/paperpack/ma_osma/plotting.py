"""PNG plots of an experiment: utility, average regret and targets covered per round."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from paperpack.core.files import atomic_path
from paperpack.ma_osma.experiment import ExperimentResults

__all__ = ["plot_results"]

_PANELS = (
    ("utility", "utility f_t(S_t)", "utility"),
    ("average_regret", "average regret vs offline greedy", "average_regret"),
    ("covered", "targets covered", "targets_covered"),
)


def _smooth(curve: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    if window <= 1 or curve.shape[-1] < window:
        return curve
    kernel = np.ones(window) / window
    return np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), -1, curve)


def plot_results(
    results: ExperimentResults, path: str | os.PathLike[str], *, title: str = "", smooth: int = 10
) -> list[Path]:
    """Write ``utility.png``, ``average_regret.png`` and ``targets_covered.png`` into the folder ``path``.

    Each plot shows the mean over seeds per algorithm with a band of one standard error. Utility and coverage
    are smoothed with a moving average of ``smooth`` rounds (the regret is already an average). Files are
    written to a temporary name and renamed, so a failed run leaves no partial PNG.

    Args:
        results: what :func:`~paperpack.ma_osma.run_experiment` returned.
        path: output folder (created if missing).
        title: prefix of every plot title, e.g. the graph.
        smooth: moving-average window in rounds.

    Returns:
        The written files.
    """
    from matplotlib.figure import Figure

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    n_seeds = len(results.seeds)
    for attribute, label, stem in _PANELS:
        data = getattr(results, attribute)
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        axes = figure.add_subplot()
        for index, name in enumerate(results.algorithms):
            curves = data[index] if attribute == "average_regret" else _smooth(data[index], smooth)
            rounds = np.arange(1, data.shape[-1] + 1)[data.shape[-1] - curves.shape[-1] :]
            mean = curves.mean(axis=0)
            error = curves.std(axis=0, ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else np.zeros_like(mean)
            (line,) = axes.plot(rounds, mean, label=name, linewidth=1.5)
            axes.fill_between(
                rounds, mean - error, mean + error, color=line.get_color(), alpha=0.2, linewidth=0
            )
        axes.set_xlabel("round t")
        axes.set_ylabel(label)
        axes.set_title(f"{title}: {label}" if title else label)
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
        target = folder / f"{stem}.png"
        with atomic_path(target) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
        written.append(target)
    return written
