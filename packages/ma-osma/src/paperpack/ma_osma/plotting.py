"""PNG plots of an experiment: utility, average regret and targets covered per round."""

from __future__ import annotations

import os
from pathlib import Path

from paperpack.core.plotting import line_plot
from paperpack.ma_osma.experiment import ExperimentResults

__all__ = ["plot_results"]

_PANELS = (
    ("utility", "utility f_t(S_t)", "utility"),
    ("average_regret", "average regret vs offline greedy", "average_regret"),
    ("covered", "targets covered", "targets_covered"),
)


def plot_results(
    results: ExperimentResults, path: str | os.PathLike[str], *, title: str = "", smooth: int = 10
) -> list[Path]:
    """Write ``utility.png``, ``average_regret.png`` and ``targets_covered.png`` into the folder ``path``.

    Each plot shows the mean over seeds per algorithm with a band of one standard error
    (:func:`paperpack.core.plotting.line_plot`). Utility and coverage are smoothed with a moving average of
    ``smooth`` rounds (the regret is already an average). Files are written atomically, so a failed run leaves
    no partial PNG.

    Args:
        results: what :func:`~paperpack.ma_osma.run_experiment` returned.
        path: output folder (created if missing).
        title: prefix of every plot title, e.g. the graph.
        smooth: moving-average window in rounds.

    Returns:
        The written files.
    """
    folder = Path(path)
    written = []
    for attribute, label, stem in _PANELS:
        data = getattr(results, attribute)
        written.append(
            line_plot(
                folder / f"{stem}.png",
                {name: data[index] for index, name in enumerate(results.algorithms)},
                xlabel="round t",
                ylabel=label,
                title=f"{title}: {label}" if title else label,
                band="se",
                smooth=1 if attribute == "average_regret" else smooth,
            )
        )
    return written
