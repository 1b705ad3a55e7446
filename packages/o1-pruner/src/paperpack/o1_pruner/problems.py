"""Problems as the package reads them: a prompt and the answer a grader compares completions with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from paperpack.core.errors import ConfigError
from paperpack.core.hf.generation import context_length

__all__ = ["Problem", "check_context", "check_problems", "grade"]


@dataclass(frozen=True)
class Problem:
    """One problem: the prompt given to the model and its reference answer."""

    prompt: str
    answer: str


def check_problems(problems: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Read problems (mappings or a ``datasets.Dataset`` with ``prompt`` and ``answer`` strings).

    Raises:
        ConfigError: naming the first problem that is not a mapping or lacks a non-empty ``prompt`` or
            ``answer``, or when there is no problem.
    """
    if isinstance(problems, str | bytes):
        raise ConfigError(
            "`problems` must be a sequence of {'prompt': ..., 'answer': ...} records, got a string"
        )
    checked = []
    for index, record in enumerate(problems):
        if not isinstance(record, Mapping):
            raise ConfigError(f"problem {index} must be a mapping with 'prompt' and 'answer', got {record!r}")
        for key in ("prompt", "answer"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"problem {index} needs a non-empty string {key!r} (got {value!r}); its fields: "
                    f"{sorted(record)}"
                )
        checked.append(Problem(prompt=record["prompt"], answer=record["answer"]))
    if not checked:
        raise ConfigError("`problems` is empty")
    return checked


def check_context(model: Any, prompt_ids: list[list[int]], max_new_tokens: int, *, flag: str) -> None:
    """Refuse prompts that with ``max_new_tokens`` new tokens would run past the model's context.

    Raises:
        ConfigError: naming the problem, its prompt length, ``flag`` and the context.
    """
    limit = context_length(model)
    if limit is None:
        return
    longest = int(np.argmax([len(ids) for ids in prompt_ids]))
    if len(prompt_ids[longest]) + max_new_tokens > limit:
        raise ConfigError(
            f"problem {longest} has a prompt of {len(prompt_ids[longest])} tokens; with "
            f"`{flag}`={max_new_tokens} a sample could reach "
            f"{len(prompt_ids[longest]) + max_new_tokens} tokens, beyond the model's context of {limit}; "
            f"lower `{flag}`"
        )


def grade(grader: Callable[[str, str], bool], completion: str, answer: str, index: int, sample: int) -> bool:
    """``grader(completion, answer)``; an error naming the problem when it raises or returns a non-bool."""
    try:
        result = grader(completion, answer)
    except Exception as error:
        raise ConfigError(
            f"the grader raised on problem {index} (answer {answer!r}), sample {sample}: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(result, bool | np.bool_):
        raise ConfigError(
            f"the grader must return a bool, got {result!r} ({type(result).__name__}) on problem {index}"
        )
    return bool(result)
