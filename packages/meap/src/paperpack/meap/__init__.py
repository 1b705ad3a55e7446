"""MEAP: Mask-Enhanced Autoregressive Prediction (Zhuang et al., ICML 2025, arXiv:2502.07490).

The public names are imported on first use, so that ``paperpack meap --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.meap.callback import MEAPEpochCallback
    from paperpack.meap.collator import MEAPCollator, MEAPSFTCollator
    from paperpack.meap.config import MEAPConfig
    from paperpack.meap.masking import mask_inputs, sample_mask
    from paperpack.meap.tokens import add_mask_token, mask_token_id

__all__ = [
    "MEAPCollator",
    "MEAPConfig",
    "MEAPEpochCallback",
    "MEAPSFTCollator",
    "add_mask_token",
    "mask_inputs",
    "mask_token_id",
    "sample_mask",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MEAPCollator": "paperpack.meap.collator",
        "MEAPSFTCollator": "paperpack.meap.collator",
        "MEAPConfig": "paperpack.meap.config",
        "MEAPEpochCallback": "paperpack.meap.callback",
        "mask_inputs": "paperpack.meap.masking",
        "sample_mask": "paperpack.meap.masking",
        "add_mask_token": "paperpack.meap.tokens",
        "mask_token_id": "paperpack.meap.tokens",
    },
)
