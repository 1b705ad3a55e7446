"""Configs of the pipeline: synthesis (teacher prompt, k candidates, rejection) and Best-of-N evaluation.

Every default here is ours unless its help says otherwise: the paper does not publish its teacher prompt,
candidate count, tags or sampling settings (see the docs' *Method*).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_literal_fields, check_number
from paperpack.safety_reasoning.trace import THINK_CLOSE, THINK_OPEN, check_tags

__all__ = [
    "DEFAULT_N_VALUES",
    "DEFAULT_REFUSAL",
    "DEFAULT_TEACHER_TEMPLATE",
    "BoNConfig",
    "Keep",
    "SynthesisConfig",
]

#: The teacher prompt (ours). ``{guidelines}`` is the numbered guideline list, ``{query}`` the query;
#: ``{think_open}`` and ``{think_close}`` are the tags.
DEFAULT_TEACHER_TEMPLATE = (
    "You write training data for an assistant that is both safe and helpful. Reason about the request below, "
    "following each guideline in order, one labelled step per guideline:\n\n"
    "{guidelines}\n\n"
    "Request: {query}\n\n"
    "Write the reasoning between {think_open} and {think_close}. After {think_close}, write only the answer "
    "the assistant gives the user; it must not mention the guidelines."
)

#: The refusal of the refusal-training (RT) baseline (ours).
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."

#: Best-of-N sizes evaluated by default (the paper goes up to N = 128).
DEFAULT_N_VALUES = (1, 2, 4, 8)

#: Which of a query's accepted candidates become training examples.
Keep = Literal["first", "shortest", "random", "all"]

_PLACEHOLDERS = {"guidelines", "query", "think_open", "think_close"}


@dataclass
class SynthesisConfig:
    """How :func:`~paperpack.safety_reasoning.synthesize` asks the teacher and keeps its answers."""

    num_candidates: int = field(
        default=4,
        metadata={
            "help": "k: teacher candidates per query before rejection sampling (ours; the paper's is unknown)"
        },
    )
    keep: Keep = field(
        default="first",
        metadata={
            "help": "which accepted candidates of a query become examples: the first, the shortest, one at "
            "random, or all (ours)"
        },
    )
    prompts_per_call: int = field(
        default=32, metadata={"help": "teacher prompts per teacher call (and per write to the journal)"}
    )
    think_open: str = field(default=THINK_OPEN, metadata={"help": "the tag that opens the reasoning (ours)"})
    think_close: str = field(
        default=THINK_CLOSE, metadata={"help": "the tag that closes the reasoning (ours)"}
    )
    teacher_template: str = field(
        default=DEFAULT_TEACHER_TEMPLATE,
        metadata={
            "help": "the teacher prompt, with {guidelines} and {query} (and optionally {think_open}, "
            "{think_close}) (ours)"
        },
    )
    seed: int = field(default=0, metadata={"help": "the seed of keep='random'"})

    def __post_init__(self) -> None:
        check_int("num_candidates", self.num_candidates, minimum=1)
        check_int("prompts_per_call", self.prompts_per_call, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_literal_fields(self)
        check_tags(self.think_open, self.think_close)
        if not isinstance(self.teacher_template, str):
            raise ConfigError(
                f"`teacher_template` must be a string, got {type(self.teacher_template).__name__}"
            )
        try:
            names = {
                name for _, name, _, _ in string.Formatter().parse(self.teacher_template) if name is not None
            }
        except ValueError as error:
            raise ConfigError(f"`teacher_template` is not a valid format string: {error}") from None
        missing = sorted({"guidelines", "query"} - names)
        unknown = sorted(names - _PLACEHOLDERS)
        if missing or unknown:
            raise ConfigError(
                "`teacher_template` must contain {guidelines} and {query} and no other placeholder than "
                f"{{think_open}} and {{think_close}}; missing: {missing or 'none'}, unknown: "
                f"{unknown or 'none'}"
            )


@dataclass
class BoNConfig:
    """How :func:`~paperpack.safety_reasoning.evaluate_bon` samples and what it judges."""

    max_new_tokens: int = field(default=128, metadata={"help": "the length limit of a response"})
    temperature: float = field(
        default=1.0,
        metadata={"help": "sampling temperature of the Best-of-N samples (ours; greedy is separate)"},
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass of the Best-of-N samples"})
    chat: bool = field(
        default=True, metadata={"help": "send each prompt as a user turn of the chat template"}
    )
    strip_reasoning: bool = field(
        default=True,
        metadata={
            "help": "judge only the answer after the reasoning block (a response that never closes it is "
            "judged whole)"
        },
    )
    think_open: str = field(default=THINK_OPEN, metadata={"help": "the tag that opens the reasoning"})
    think_close: str = field(default=THINK_CLOSE, metadata={"help": "the tag that closes the reasoning"})

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_number("temperature", self.temperature, greater_than=0)
        check_number("top_p", self.top_p, greater_than=0, maximum=1)
        check_tags(self.think_open, self.think_close)
