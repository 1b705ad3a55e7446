"""O1-Pruner: length-harmonizing fine-tuning for shorter reasoning (arXiv:2501.12570).

The public names are imported on first use, so that ``paperpack o1-pruner --help`` does not load torch.
"""

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.o1_pruner.collator import O1PrunerCollator
    from paperpack.o1_pruner.config import O1PrunerConfig
    from paperpack.o1_pruner.evaluation import Evaluation, evaluate
    from paperpack.o1_pruner.graders import GRADERS, boxed_grader, last_number_grader, math_verify_grader
    from paperpack.o1_pruner.grpo import length_harmonizing_reward_func
    from paperpack.o1_pruner.loss import o1_pruner_loss
    from paperpack.o1_pruner.metrics import aes
    from paperpack.o1_pruner.presampling import presample
    from paperpack.o1_pruner.reward import harmonized_weights, length_harmonizing_reward
    from paperpack.o1_pruner.trainer import O1PrunerTrainer

__all__ = [
    "GRADERS",
    "Evaluation",
    "O1PrunerCollator",
    "O1PrunerConfig",
    "O1PrunerTrainer",
    "aes",
    "boxed_grader",
    "evaluate",
    "harmonized_weights",
    "last_number_grader",
    "length_harmonizing_reward",
    "length_harmonizing_reward_func",
    "math_verify_grader",
    "o1_pruner_loss",
    "presample",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GRADERS": "paperpack.o1_pruner.graders",
        "Evaluation": "paperpack.o1_pruner.evaluation",
        "O1PrunerCollator": "paperpack.o1_pruner.collator",
        "O1PrunerConfig": "paperpack.o1_pruner.config",
        "O1PrunerTrainer": "paperpack.o1_pruner.trainer",
        "aes": "paperpack.o1_pruner.metrics",
        "boxed_grader": "paperpack.o1_pruner.graders",
        "evaluate": "paperpack.o1_pruner.evaluation",
        "harmonized_weights": "paperpack.o1_pruner.reward",
        "last_number_grader": "paperpack.o1_pruner.graders",
        "length_harmonizing_reward": "paperpack.o1_pruner.reward",
        "length_harmonizing_reward_func": "paperpack.o1_pruner.grpo",
        "math_verify_grader": "paperpack.o1_pruner.graders",
        "o1_pruner_loss": "paperpack.o1_pruner.loss",
        "presample": "paperpack.o1_pruner.presampling",
    },
)
