"""The graders on typical completions and answers, and their errors for answers they cannot read."""

from __future__ import annotations

import pytest

from paperpack.o1_pruner import boxed_grader, last_number_grader, math_verify_grader


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("s=3+4=7 ; answer 7", "7", True),
        ("s=3+4=7 ; answer 8", "7", False),
        ("The total is 1,234.", "1234", True),
        ("so we get -3", "-3", True),
        ("it is 2.50", "2.5", True),
        ("no number here", "1", False),
        ("first 7 then 9", "7", False),
    ],
)
def test_last_number_grader(completion: str, answer: str, expected: bool) -> None:
    assert last_number_grader(completion, answer) is expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"Thus $\boxed{\dfrac{1}{2}}$.", "0.5", True),
        (r"Thus $\boxed{\frac{1}{2}}$.", r"\frac12", False),  # not the same string, and \frac12 is no number
        (r"first \boxed{3} then \boxed{4}", "4", True),
        (r"\boxed{x^{2}+1}", r"x^{2} + 1", True),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)", True),
        (r"\boxed{10\text{ cm}}", r"10cm", True),
        ("the answer is 4", "4", False),  # no \boxed{}
        (r"\boxed{5}", r"\boxed{5}", True),
    ],
)
def test_boxed_grader(completion: str, answer: str, expected: bool) -> None:
    assert boxed_grader(completion, answer) is expected


def test_graders_refuse_answers_they_cannot_read() -> None:
    with pytest.raises(ValueError, match="numeric answer"):
        last_number_grader("7", "seven")
    with pytest.raises(ValueError, match="non-empty answer"):
        boxed_grader(r"\boxed{1}", "  ")


def test_math_verify_grader() -> None:
    pytest.importorskip("math_verify")
    assert math_verify_grader(r"So the answer is $\boxed{\frac{1}{2}}$.", "0.5")
    assert math_verify_grader(r"We get $\boxed{2\sqrt{2}}$", r"\sqrt{8}")
    assert not math_verify_grader(r"$\boxed{3}$", "4")
