"""paperpack-merge-router: Mediator, average-or-route merging with uncertainty routing (arXiv:2502.04411).

Measure the parameter conflict d_l of each layer between experts fine-tuned from one base; average the layers
with little conflict; keep the others as one dense expert plus one sparse expert per task, and route each
input sequence to its task's sparse expert (or a confidence-weighted mix of the top experts when the router is
unsure). Merges come from paperpack-r-tsvm.

The public names are imported on first use, so that ``paperpack merge-router --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.merge_router.compile import MediatorReport as MediatorReport
    from paperpack.merge_router.compile import compile_mediator as compile_mediator
    from paperpack.merge_router.config import MediatorConfig as MediatorConfig
    from paperpack.merge_router.conflicts import layer_conflicts as layer_conflicts
    from paperpack.merge_router.conflicts import select_routed as select_routed
    from paperpack.merge_router.model import MediatorModel as MediatorModel
    from paperpack.merge_router.router import Router as Router
    from paperpack.merge_router.router import Routing as Routing
    from paperpack.merge_router.sparse import extract_sparse as extract_sparse
    from paperpack.merge_router.units import in_block as in_block
    from paperpack.merge_router.units import unit_of as unit_of

__getattr__, __dir__ = lazy_exports(__name__)
