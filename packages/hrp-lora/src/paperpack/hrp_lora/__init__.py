"""paperpack-hrp-lora: High-Rank Preheating for LoRA initialization (HRP, arXiv:2502.07739).

Train a high-rank LoRA for a few steps, take the SVD of its update, and start the rank-r LoRA from the leading
singular directions. The base weights are never changed, so the adapter loads on an unmodified base with
stock PEFT.

The public names are imported on first use, so that ``paperpack hrp-lora --help`` (which imports this
package) does not pay for torch, transformers and peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.hrp_lora.config import HRPConfig as HRPConfig
    from paperpack.hrp_lora.extraction import preheat_directions as preheat_directions
    from paperpack.hrp_lora.initialize import hrp_initialize as hrp_initialize
    from paperpack.hrp_lora.svd import factored_svd as factored_svd
    from paperpack.hrp_lora.svd import initial_factors as initial_factors
    from paperpack.hrp_lora.trainer import hrp_initialize_trainer as hrp_initialize_trainer

__getattr__, __dir__ = lazy_exports(__name__)
