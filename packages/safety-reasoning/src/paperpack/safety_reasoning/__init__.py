"""paperpack-safety-reasoning: safety reasoning with guidelines (SRG, arXiv:2502.04040).

Synthesize, for harmful and benign queries alike, reasoning that follows written guidelines (a teacher model
writes it, a judge rejects what answers wrongly), fine-tune a model to reason before it answers without the
guidelines in its prompt, and measure greedy and Best-of-N attack success on held-out attack families beside
the refusal-training (RT) baseline.

The public names are imported on first use, so that ``paperpack safety-reasoning --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.safety_reasoning.attacks import ATTACKS as ATTACKS
    from paperpack.safety_reasoning.bon import BoNReport as BoNReport
    from paperpack.safety_reasoning.bon import evaluate_bon as evaluate_bon
    from paperpack.safety_reasoning.config import BoNConfig as BoNConfig
    from paperpack.safety_reasoning.config import SynthesisConfig as SynthesisConfig
    from paperpack.safety_reasoning.guidelines import Guideline as Guideline
    from paperpack.safety_reasoning.guidelines import GuidelineSet as GuidelineSet
    from paperpack.safety_reasoning.judges import ClassifierJudge as ClassifierJudge
    from paperpack.safety_reasoning.judges import KeywordJudge as KeywordJudge
    from paperpack.safety_reasoning.judges import is_refusal as is_refusal
    from paperpack.safety_reasoning.synthesis import SynthesisStats as SynthesisStats
    from paperpack.safety_reasoning.synthesis import refusal_dataset as refusal_dataset
    from paperpack.safety_reasoning.synthesis import synthesize as synthesize
    from paperpack.safety_reasoning.teachers import OpenAITeacher as OpenAITeacher
    from paperpack.safety_reasoning.teachers import TeacherError as TeacherError
    from paperpack.safety_reasoning.teachers import TransformersTeacher as TransformersTeacher
    from paperpack.safety_reasoning.trace import final_answer as final_answer
    from paperpack.safety_reasoning.trace import format_trace as format_trace
    from paperpack.safety_reasoning.trace import parse_trace as parse_trace
    from paperpack.safety_reasoning.training import sft_config as sft_config
    from paperpack.safety_reasoning.training import sft_trainer as sft_trainer

__getattr__, __dir__ = lazy_exports(__name__)
