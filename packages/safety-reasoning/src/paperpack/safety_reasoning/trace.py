"""The reasoning trace format: the reasoning in ``<think>`` tags, then the final answer.

The paper's exact tags are unknown; ``<think>`` / ``</think>`` are our default (so that TRL's
``think_format_reward`` applies) and configurable. A trace is written as::

    <think>
    {reasoning}
    </think>
    {answer}

Examples:
    >>> from paperpack.safety_reasoning.trace import final_answer, format_trace, parse_trace
    >>> text = format_trace("Intent: a kite. Harm: none.", "Sure: cut, tie, fly.")
    >>> parse_trace(text)
    Trace(reasoning='Intent: a kite. Harm: none.', answer='Sure: cut, tie, fly.')
    >>> final_answer(text)
    'Sure: cut, tie, fly.'
"""

from __future__ import annotations

from dataclasses import dataclass

from paperpack.core.errors import ConfigError

__all__ = ["THINK_CLOSE", "THINK_OPEN", "Trace", "check_tags", "final_answer", "format_trace", "parse_trace"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Trace:
    """A parsed trace: the reasoning between the tags and the answer after the closing tag (both stripped)."""

    reasoning: str
    answer: str


def check_tags(think_open: str, think_close: str) -> None:
    """Refuse empty, blank or equal tags (a trace could not be parsed back)."""
    for name, tag in (("think_open", think_open), ("think_close", think_close)):
        if not isinstance(tag, str) or not tag.strip():
            raise ConfigError(f"`{name}` must be a non-empty tag such as '<think>', got {tag!r}")
    if think_open == think_close or think_close in think_open or think_open in think_close:
        raise ConfigError(
            f"`think_open` and `think_close` must differ and not contain each other, got "
            f"{think_open!r} and {think_close!r}"
        )


def format_trace(
    reasoning: str, answer: str, *, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE
) -> str:
    """Write ``reasoning`` and ``answer`` as one completion: the reasoning in tags, then the answer.

    Raises:
        ConfigError: when the reasoning is empty or contains a tag (it could not be parsed back).
    """
    reasoning, answer = reasoning.strip(), answer.strip()
    if not reasoning:
        raise ConfigError("`reasoning` must not be empty")
    if think_open in reasoning or think_close in reasoning:
        raise ConfigError(f"`reasoning` must not contain the tags {think_open!r} / {think_close!r}")
    return f"{think_open}\n{reasoning}\n{think_close}\n{answer}"


def parse_trace(text: str, *, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> Trace | None:
    """Split a teacher's or model's output into reasoning and answer; None when it has no reasoning block.

    The reasoning is between the first opening tag and the first closing tag after it; anything before the
    opening tag (a preamble) is ignored; the answer is everything after the closing tag. None when a tag is
    missing, the reasoning is blank, or the reasoning opens a second block.
    """
    start = text.find(think_open)
    if start < 0:
        return None
    end = text.find(think_close, start + len(think_open))
    if end < 0:
        return None
    reasoning = text[start + len(think_open) : end].strip()
    if not reasoning or think_open in reasoning:
        return None
    return Trace(reasoning=reasoning, answer=text[end + len(think_close) :].strip())


def final_answer(text: str, *, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> str:
    """What the user is shown: the text after the last closing tag; without one, the whole output.

    An unfinished reasoning block (the model ran out of tokens) is judged as it stands, tags removed: a
    judge then sees the reasoning itself, which counts against a model that never reaches an answer.
    """
    end = text.rfind(think_close)
    if end >= 0:
        return text[end + len(think_close) :].strip()
    return text.replace(think_open, "").strip()
