"""Panacea (arXiv:2501.18100): an optimized post-fine-tuning perturbation against harmful fine-tuning.

While a model is fine-tuned on user data that may hold harmful samples, Panacea learns weights to which the
perturbation ε = ρ·∇h/‖∇h‖ (the direction that most raises the harmful loss h) can be added, and adds
the final ε after training: safety comes back, task accuracy stays.

The public names are imported on first use, so that ``paperpack panacea --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.panacea.config import PanaceaConfig as PanaceaConfig
    from paperpack.panacea.evaluation import ClassifierJudge as ClassifierJudge
    from paperpack.panacea.evaluation import HarmfulScore as HarmfulScore
    from paperpack.panacea.evaluation import Judge as Judge
    from paperpack.panacea.evaluation import KeywordJudge as KeywordJudge
    from paperpack.panacea.evaluation import harmful_score as harmful_score
    from paperpack.panacea.evaluation import is_incoherent as is_incoherent
    from paperpack.panacea.layers import LayerCoefficient as LayerCoefficient
    from paperpack.panacea.layers import layer_safety_coefficients as layer_safety_coefficients
    from paperpack.panacea.perturbation import apply_perturbation as apply_perturbation
    from paperpack.panacea.perturbation import check_perturbation as check_perturbation
    from paperpack.panacea.perturbation import global_norm as global_norm
    from paperpack.panacea.perturbation import load_perturbation as load_perturbation
    from paperpack.panacea.perturbation import perturbation_from_gradient as perturbation_from_gradient
    from paperpack.panacea.perturbation import random_perturbation as random_perturbation
    from paperpack.panacea.perturbation import save_perturbation as save_perturbation
    from paperpack.panacea.perturbation import select_parameters as select_parameters
    from paperpack.panacea.sft import PanaceaSFTConfig as PanaceaSFTConfig
    from paperpack.panacea.sft import PanaceaSFTTrainer as PanaceaSFTTrainer
    from paperpack.panacea.trainer import PanaceaCallback as PanaceaCallback
    from paperpack.panacea.trainer import PanaceaTrainer as PanaceaTrainer
    from paperpack.panacea.trainer import PanaceaTrainerMixin as PanaceaTrainerMixin

__getattr__, __dir__ = lazy_exports(__name__)
