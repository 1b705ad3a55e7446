"""MEAP: Mask-Enhanced Autoregressive Prediction (Zhuang et al., ICML 2025, arXiv:2502.07490).

The public names are imported on first use, so that ``paperpack meap --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.meap.callback import MEAPEpochCallback as MEAPEpochCallback
    from paperpack.meap.collator import MEAPCollator as MEAPCollator
    from paperpack.meap.collator import MEAPSFTCollator as MEAPSFTCollator
    from paperpack.meap.config import MEAPConfig as MEAPConfig
    from paperpack.meap.masking import mask_inputs as mask_inputs
    from paperpack.meap.masking import sample_mask as sample_mask
    from paperpack.meap.tokens import add_mask_token as add_mask_token
    from paperpack.meap.tokens import mask_token_id as mask_token_id

__getattr__, __dir__ = lazy_exports(__name__)
