r"""Graders ``(completion, answer) -> bool``: is the completion's final answer the reference answer?

- :func:`last_number_grader`: the last number in the completion equals the answer's number (GSM8K style).
- :func:`boxed_grader`: the content of the last ``\boxed{...}`` equals the answer after a light LaTeX
  normalization, or numerically when both are numbers (the paper's prompt asks for ``\boxed{}``).
- :func:`math_verify_grader`: symbolic equivalence with Hugging Face's ``math-verify`` (the optional extra
  ``pip install 'paperpack-o1-pruner[math-verify]'``).

A grader raises ``ValueError`` for an answer it cannot read; :func:`~paperpack.o1_pruner.presample` turns any
exception of a grader into an error naming the problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

__all__ = ["GRADERS", "Grader", "boxed_grader", "last_number_grader", "math_verify_grader"]

Grader = Callable[[str, str], bool]
"""A grader: ``grader(completion, answer) -> bool``."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _number(text: str) -> Fraction | None:
    """The value of a plain number (``1,234``, ``-0.5``, ``3/4``), or None."""
    cleaned = text.strip().replace(",", "").rstrip(".")
    if cleaned.startswith("+"):
        cleaned = cleaned[1:]
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def last_number_grader(completion: str, answer: str) -> bool:
    """Whether the last number in ``completion`` equals the number ``answer`` (``1,000`` = ``1000.0``).

    Raises:
        ValueError: when ``answer`` is not a number.

    Examples:
        >>> from paperpack.o1_pruner import last_number_grader
        >>> last_number_grader("3 + 4 = 7, so the answer is 7.", "7")
        True
        >>> last_number_grader("the answer is 8", "7")
        False
    """
    expected = _number(answer)
    if expected is None:
        raise ValueError(f"last_number_grader needs a numeric answer, got {answer!r}")
    found = _NUMBER.findall(completion)
    return bool(found) and _number(found[-1]) == expected


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    depth = 0
    opened = text.index("{", start)
    for position in range(opened, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[opened + 1 : position]
    return None


_REPLACEMENTS = (
    ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""),
)  # fmt: skip
_FRACTION = re.compile(r"\\frac\{(-?\d+)\}\{(\d+)\}")


def _normalize(text: str) -> str:
    """A light LaTeX normalization: spacing, left/right, dfrac, dollar signs, a trailing period."""
    out = text.strip().strip("$").strip()
    for old, new in _REPLACEMENTS:
        out = out.replace(old, new)
    out = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", out)
    out = re.sub(r"\s+", "", out).rstrip(".")
    return _FRACTION.sub(r"\1/\2", out)


def boxed_grader(completion: str, answer: str) -> bool:
    r"""Whether the last ``\boxed{...}`` of ``completion`` matches ``answer``.

    Both sides are normalized (spacing, ``\left``/``\right``, ``\dfrac`` → ``\frac``, ``\frac{a}{b}`` of
    integers → ``a/b``, ``\text{}``, dollar signs, a trailing period) and compared as strings, or as numbers
    when both read as numbers (``0.5`` = ``\frac{1}{2}``). ``answer`` may itself be boxed. A completion
    without ``\boxed{}`` is wrong. For symbolic equivalence use :func:`math_verify_grader`.

    Raises:
        ValueError: when ``answer`` is empty.

    Examples:
        >>> from paperpack.o1_pruner import boxed_grader
        >>> boxed_grader(r"so $x = \boxed{\dfrac{1}{2}}$.", "0.5")
        True
    """
    reference = _last_boxed(answer) if "\\boxed{" in answer else answer
    if reference is None or not _normalize(reference):
        raise ValueError(f"boxed_grader needs a non-empty answer, got {answer!r}")
    found = _last_boxed(completion)
    if found is None:
        return False
    got, want = _normalize(found), _normalize(reference)
    if got == want:
        return True
    got_number, want_number = _number(got), _number(want)
    return got_number is not None and got_number == want_number


def math_verify_grader(completion: str, answer: str) -> bool:
    r"""Whether ``completion``'s final answer is symbolically equal to ``answer``, by ``math-verify``.

    Needs the optional extra: ``pip install 'paperpack-o1-pruner[math-verify]'``. ``math-verify`` bounds each
    parse with ``signal.alarm``, which works only in the main thread; elsewhere the timeouts are off.

    Raises:
        ImportError: when ``math-verify`` is not installed, naming the extra.
        ValueError: when ``answer`` does not parse.

    Examples:
        >>> from paperpack.o1_pruner import math_verify_grader
        >>> math_verify_grader(r"The answer is $\boxed{\frac{1}{2}}$.", "$0.5$")
        True
    """
    try:
        import math_verify
    except ImportError as error:
        raise ImportError(
            "math_verify_grader needs math-verify: pip install 'paperpack-o1-pruner[math-verify]'"
        ) from error
    import threading

    timeout = None if threading.current_thread() is not threading.main_thread() else 5
    gold = math_verify.parse(
        answer if "$" in answer or "\\boxed" in answer else f"${answer}$", parsing_timeout=timeout
    )
    if not gold:
        raise ValueError(f"math_verify_grader cannot parse the answer {answer!r}")
    predicted = math_verify.parse(completion, parsing_timeout=timeout)
    return bool(predicted) and bool(math_verify.verify(gold, predicted, timeout_seconds=timeout))


GRADERS: dict[str, Grader] = {
    "last_number": last_number_grader,
    "boxed": boxed_grader,
    "math_verify": math_verify_grader,
}
"""The graders by the name the CLI's ``--grader`` takes."""
