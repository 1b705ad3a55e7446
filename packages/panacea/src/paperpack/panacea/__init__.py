"""Panacea (arXiv:2501.18100): an optimized post-fine-tuning perturbation against harmful fine-tuning.

While a model is fine-tuned on user data that may hold harmful samples, Panacea learns weights to which the
perturbation ε = ρ·∇h/‖∇h‖ (the direction that most raises the harmful loss h) can be added, and adds
the final ε after training: safety comes back, task accuracy stays.

The public names are imported on first use, so that ``paperpack panacea --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.panacea.config import PanaceaConfig
    from paperpack.panacea.evaluation import (
        ClassifierJudge,
        HarmfulScore,
        Judge,
        KeywordJudge,
        harmful_score,
        is_incoherent,
    )
    from paperpack.panacea.layers import LayerCoefficient, layer_safety_coefficients
    from paperpack.panacea.perturbation import (
        apply_perturbation,
        global_norm,
        load_perturbation,
        perturbation_from_gradient,
        random_perturbation,
        save_perturbation,
        select_parameters,
    )
    from paperpack.panacea.sft import PanaceaSFTConfig, PanaceaSFTTrainer
    from paperpack.panacea.trainer import PanaceaCallback, PanaceaTrainer, PanaceaTrainerMixin

__all__ = [
    "ClassifierJudge",
    "HarmfulScore",
    "Judge",
    "KeywordJudge",
    "LayerCoefficient",
    "PanaceaCallback",
    "PanaceaConfig",
    "PanaceaSFTConfig",
    "PanaceaSFTTrainer",
    "PanaceaTrainer",
    "PanaceaTrainerMixin",
    "apply_perturbation",
    "global_norm",
    "harmful_score",
    "is_incoherent",
    "layer_safety_coefficients",
    "load_perturbation",
    "perturbation_from_gradient",
    "random_perturbation",
    "save_perturbation",
    "select_parameters",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PanaceaConfig": "paperpack.panacea.config",
        "ClassifierJudge": "paperpack.panacea.evaluation",
        "HarmfulScore": "paperpack.panacea.evaluation",
        "Judge": "paperpack.panacea.evaluation",
        "KeywordJudge": "paperpack.panacea.evaluation",
        "harmful_score": "paperpack.panacea.evaluation",
        "is_incoherent": "paperpack.panacea.evaluation",
        "LayerCoefficient": "paperpack.panacea.layers",
        "layer_safety_coefficients": "paperpack.panacea.layers",
        "apply_perturbation": "paperpack.panacea.perturbation",
        "global_norm": "paperpack.panacea.perturbation",
        "load_perturbation": "paperpack.panacea.perturbation",
        "perturbation_from_gradient": "paperpack.panacea.perturbation",
        "random_perturbation": "paperpack.panacea.perturbation",
        "save_perturbation": "paperpack.panacea.perturbation",
        "select_parameters": "paperpack.panacea.perturbation",
        "PanaceaSFTConfig": "paperpack.panacea.sft",
        "PanaceaSFTTrainer": "paperpack.panacea.sft",
        "PanaceaCallback": "paperpack.panacea.trainer",
        "PanaceaTrainer": "paperpack.panacea.trainer",
        "PanaceaTrainerMixin": "paperpack.panacea.trainer",
    },
)
