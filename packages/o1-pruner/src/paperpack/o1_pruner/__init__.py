"""O1-Pruner: length-harmonizing fine-tuning for shorter reasoning (arXiv:2501.12570).

The public names are imported on first use, so that ``paperpack o1-pruner --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.o1_pruner.collator import O1PrunerCollator as O1PrunerCollator
    from paperpack.o1_pruner.config import O1PrunerConfig as O1PrunerConfig
    from paperpack.o1_pruner.evaluation import Evaluation as Evaluation
    from paperpack.o1_pruner.evaluation import evaluate as evaluate
    from paperpack.o1_pruner.graders import GRADERS as GRADERS
    from paperpack.o1_pruner.graders import boxed_grader as boxed_grader
    from paperpack.o1_pruner.graders import last_number_grader as last_number_grader
    from paperpack.o1_pruner.graders import math_verify_grader as math_verify_grader
    from paperpack.o1_pruner.grpo import length_harmonizing_reward_func as length_harmonizing_reward_func
    from paperpack.o1_pruner.loss import o1_pruner_loss as o1_pruner_loss
    from paperpack.o1_pruner.metrics import aes as aes
    from paperpack.o1_pruner.presampling import presample as presample
    from paperpack.o1_pruner.presampling import reference_log_probs as reference_log_probs
    from paperpack.o1_pruner.reward import harmonized_weights as harmonized_weights
    from paperpack.o1_pruner.reward import length_harmonizing_reward as length_harmonizing_reward
    from paperpack.o1_pruner.trainer import O1PrunerTrainer as O1PrunerTrainer

__getattr__, __dir__ = lazy_exports(__name__)
