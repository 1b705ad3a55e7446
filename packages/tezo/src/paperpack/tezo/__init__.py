"""TeZO: low-rank temporal zeroth-order fine-tuning (arXiv:2501.19057), with MeZO and LOZO baselines.

The public names are imported on first use, so that ``paperpack tezo --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.tezo.config import ZOConfig
    from paperpack.tezo.methods import METHODS
    from paperpack.tezo.optim import ZOOptimizer, zo_state_bytes
    from paperpack.tezo.sft import ZOSFTConfig, ZOSFTTrainer
    from paperpack.tezo.trainer import ZOTrainer, ZOTrainerMixin

__all__ = [
    "METHODS",
    "ZOConfig",
    "ZOOptimizer",
    "ZOSFTConfig",
    "ZOSFTTrainer",
    "ZOTrainer",
    "ZOTrainerMixin",
    "zo_state_bytes",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "METHODS": "paperpack.tezo.methods",
        "ZOConfig": "paperpack.tezo.config",
        "ZOOptimizer": "paperpack.tezo.optim",
        "zo_state_bytes": "paperpack.tezo.optim",
        "ZOTrainer": "paperpack.tezo.trainer",
        "ZOTrainerMixin": "paperpack.tezo.trainer",
        "ZOSFTConfig": "paperpack.tezo.sft",
        "ZOSFTTrainer": "paperpack.tezo.sft",
    },
)
