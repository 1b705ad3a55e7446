"""paperpack-sewa: Selective Weight Averaging (SeWA, arXiv:2502.10119).

Learn which k of the last K training snapshots to average with a relaxed probabilistic mask, and compare
against the averaging baselines (last iterate, uniform/SWA, LAWA, EMA, random-k). Vocabulary: *snapshots* are
state dicts in memory (``select_snapshots``, ``average_snapshots``), *checkpoints* are folders on disk
(``paperpack.sewa.checkpoints``, behind ``paperpack sewa average``).

The public names are imported on first use, so that ``paperpack sewa --help`` (which imports this package)
does not pay for torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.sewa.averaging import average_snapshots as average_snapshots
    from paperpack.sewa.averaging import baseline_weights as baseline_weights
    from paperpack.sewa.batch_norm import update_batch_norm as update_batch_norm
    from paperpack.sewa.callback import SeWACallback as SeWACallback
    from paperpack.sewa.callback import snapshot_state as snapshot_state
    from paperpack.sewa.config import SeWAConfig as SeWAConfig
    from paperpack.sewa.projection import project_capped_simplex as project_capped_simplex
    from paperpack.sewa.selection import MaskTieWarning as MaskTieWarning
    from paperpack.sewa.selection import SeWAResult as SeWAResult
    from paperpack.sewa.selection import select_snapshots as select_snapshots

__getattr__, __dir__ = lazy_exports(__name__)
