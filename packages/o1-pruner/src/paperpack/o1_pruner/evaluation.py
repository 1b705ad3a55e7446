"""Greedy evaluation: accuracy and mean completion length of a model on problems (the paper's metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paperpack.core.hf import encode_prompts, sample_completions
from paperpack.core.validation import check_int
from paperpack.o1_pruner.graders import Grader
from paperpack.o1_pruner.problems import check_context, check_problems, grade

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        accuracy: the fraction of problems answered correctly.
        mean_length: the mean completion length in tokens (end-of-sequence included).
        lengths: each problem's completion length.
        correct: whether each problem was answered correctly.
        finished: whether each completion ended with the end-of-sequence token.
        completions: the completions' texts.
    """

    accuracy: float
    mean_length: float
    lengths: list[int]
    correct: list[bool]
    finished: list[bool]
    completions: list[str]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Iterable[Mapping[str, Any]],
    grader: Grader,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    chat_template: bool = False,
    progress: bool = False,
) -> Evaluation:
    """Greedy-decode one completion per problem and grade it (the paper evaluates greedily).

    Args:
        model: the model to evaluate (its training mode is restored afterwards).
        tokenizer: its tokenizer.
        problems: records with ``prompt`` and ``answer``.
        grader: ``(completion, answer) -> bool``.
        max_new_tokens: the length limit of each completion.
        batch_size: problems per ``generate`` call.
        chat_template: wrap prompts with the tokenizer's chat template (as in pre-sampling).
        progress: show a progress bar over batches.

    Raises:
        ConfigError: for a bad problem, a prompt that with ``max_new_tokens`` would pass the model's context,
            or a grader that raises or returns a non-bool.
    """
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    checked = check_problems(problems)
    prompt_ids = encode_prompts(tokenizer, [p.prompt for p in checked], chat=chat_template)
    check_context(model, prompt_ids, max_new_tokens, flag="max_new_tokens")
    was_training = model.training
    model.eval()
    try:
        outputs = sample_completions(
            model,
            tokenizer,
            [p.prompt for p in checked],
            do_sample=False,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat=chat_template,
            progress=progress,
        )
    finally:
        model.train(was_training)
    completions = [samples[0] for samples in outputs]
    correct = [
        grade(grader, c.text, p.answer, i, 0)
        for i, (p, c) in enumerate(zip(checked, completions, strict=True))
    ]
    lengths = [len(c.token_ids) for c in completions]
    return Evaluation(
        accuracy=sum(correct) / len(correct),
        mean_length=sum(lengths) / len(lengths),
        lengths=lengths,
        correct=correct,
        finished=[c.finished for c in completions],
        completions=[c.text for c in completions],
    )
