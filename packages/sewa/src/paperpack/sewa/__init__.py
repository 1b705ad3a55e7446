"""paperpack-sewa: Selective Weight Averaging (SeWA, arXiv:2502.10119).

Learn which k of the last K training snapshots to average with a relaxed probabilistic mask, and compare
against the averaging baselines (last iterate, uniform/SWA, LAWA, EMA, random-k).

The public names are imported on first use, so that ``paperpack sewa --help`` (which imports this package)
does not pay for torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.sewa.averaging import average_checkpoints, baseline_weights
    from paperpack.sewa.callback import SeWACallback
    from paperpack.sewa.config import SeWAConfig
    from paperpack.sewa.projection import project_capped_simplex
    from paperpack.sewa.selection import SeWAResult, select_checkpoints

__all__ = [
    "SeWACallback",
    "SeWAConfig",
    "SeWAResult",
    "average_checkpoints",
    "baseline_weights",
    "project_capped_simplex",
    "select_checkpoints",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SeWACallback": "paperpack.sewa.callback",
        "SeWAConfig": "paperpack.sewa.config",
        "SeWAResult": "paperpack.sewa.selection",
        "average_checkpoints": "paperpack.sewa.averaging",
        "baseline_weights": "paperpack.sewa.averaging",
        "project_capped_simplex": "paperpack.sewa.projection",
        "select_checkpoints": "paperpack.sewa.selection",
    },
)
