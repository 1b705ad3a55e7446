"""TeZO: low-rank temporal zeroth-order fine-tuning (arXiv:2501.19057), with MeZO and LOZO baselines.

The public names are imported on first use, so that ``paperpack tezo --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.tezo.choices import METHODS as METHODS
    from paperpack.tezo.config import ZOConfig as ZOConfig
    from paperpack.tezo.optim import ZOOptimizer as ZOOptimizer
    from paperpack.tezo.optim import zo_state_bytes as zo_state_bytes
    from paperpack.tezo.sft import ZOSFTConfig as ZOSFTConfig
    from paperpack.tezo.sft import ZOSFTTrainer as ZOSFTTrainer
    from paperpack.tezo.trainer import ZOTrainer as ZOTrainer
    from paperpack.tezo.trainer import ZOTrainerMixin as ZOTrainerMixin

__getattr__, __dir__ = lazy_exports(__name__)
