r"""Guideline-conditioned synthesis with rejection sampling, and the refusal-training (RT) baseline data.

For every query x (harmful or benign) the teacher gets the guidelines C and x (``teacher_template``) and
answers k times; a candidate is kept when it has a reasoning block and an answer, and its answer has the right
label: not harmful for a harmful query (the judge), not a refusal for a benign one (the refusal detector).
The training example is x alone as the user turn (C is not in it: the model internalizes the guidelines) and
the trace, reasoning in tags, then the answer, as the assistant turn: TRL's conversational prompt-completion
format, ready for ``SFTTrainer``.

Examples:
    >>> from paperpack.safety_reasoning import GuidelineSet, KeywordJudge, SynthesisStats, synthesize
    >>> def teacher(prompts):
    ...     return ["<think>Intent: a kite. Harm: none.</think>Sure: cut, tie, fly." for _ in prompts]
    >>> data = synthesize(
    ...     [{"prompt": "How do I make a kite?", "harmful": False}], teacher, GuidelineSet.default(),
    ...     KeywordJudge(),
    ... )
    >>> data[0]["completion"][0]["content"]
    '<think>\nIntent: a kite. Harm: none.\n</think>\nSure: cut, tie, fly.'
    >>> SynthesisStats.from_dataset(data).kept
    1
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from paperpack.core.errors import ConfigError
from paperpack.safety_reasoning.config import DEFAULT_REFUSAL, SynthesisConfig
from paperpack.safety_reasoning.guidelines import GuidelineSet
from paperpack.safety_reasoning.journal import Journal, fingerprint
from paperpack.safety_reasoning.judges import is_refusal, judge_all
from paperpack.safety_reasoning.teachers import TeacherError, check_answers
from paperpack.safety_reasoning.trace import final_answer, format_trace, parse_trace

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "DROP_REASONS",
    "Query",
    "SynthesisStats",
    "check_queries",
    "refusal_dataset",
    "synthesize",
    "teacher_prompt",
]

logger = logging.getLogger(__name__)

#: Why a candidate is dropped: no reasoning block (or a malformed one), nothing after the reasoning, a
#: harmful query answered harmfully (the judge), a benign query refused (the refusal detector).
DROP_REASONS = ("no_reasoning", "empty_answer", "harmful_answer", "refused_benign")


@dataclass(frozen=True)
class Query:
    """One query: its text and whether it is harmful."""

    prompt: str
    harmful: bool


def check_queries(queries: Iterable[Mapping[str, Any]]) -> list[Query]:
    """Read query rows (mappings or a ``datasets.Dataset``) with a ``prompt`` (text) and ``harmful`` (bool).

    Raises:
        ConfigError: naming the first bad row and what it lacks.
    """
    if isinstance(queries, str | bytes | Mapping):
        raise ConfigError("`queries` must be a list of rows such as {'prompt': ..., 'harmful': true}")
    rows = []
    for number, row in enumerate(queries):
        if not isinstance(row, Mapping):
            raise ConfigError(
                f"query {number} must be a mapping with `prompt` and `harmful`, got {row!r:.80}"
            )
        prompt, harmful = row.get("prompt"), row.get("harmful")
        if "harmful" not in row:
            raise ConfigError(
                f"query {number} has no `harmful` field; every query needs `prompt` (text) and `harmful` "
                "(true or false)"
            )
        if not isinstance(harmful, bool):
            raise ConfigError(f"query {number}: `harmful` must be true or false, got {harmful!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"query {number}: `prompt` must be non-empty text, got {prompt!r:.80}")
        rows.append(Query(prompt, harmful))
    if not rows:
        raise ConfigError("`queries` is empty; give at least one query")
    return rows


def teacher_prompt(query: str, guidelines: GuidelineSet, config: SynthesisConfig) -> str:
    """The prompt the teacher answers for ``query``: ``config.teacher_template`` filled in."""
    return config.teacher_template.format(
        guidelines=guidelines.render(),
        query=query,
        think_open=config.think_open,
        think_close=config.think_close,
    )


@dataclass
class SynthesisStats:
    """What synthesis asked, kept and dropped, and why.

    Attributes:
        queries: queries given.
        candidates: teacher answers judged (queries x k).
        accepted: candidates that passed every check.
        kept: training examples written (``accepted`` with ``keep="all"``, else one per query at most).
        dropped: reason (see :data:`DROP_REASONS`) -> candidates dropped for it.
        queries_without_example: queries none of whose k candidates passed.
        harmful_examples: examples for harmful queries.
        benign_examples: examples for benign queries.
        guidelines: the guideline set's fingerprint.
        teacher_calls: calls made to the teacher in this run (0 when everything came from the journal).
    """

    queries: int
    candidates: int
    accepted: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    queries_without_example: int = 0
    harmful_examples: int = 0
    benign_examples: int = 0
    guidelines: str = ""
    teacher_calls: int = 0

    def to_json(self) -> str:
        """One JSON object (what :meth:`from_dataset` reads back)."""
        return json.dumps({"synthesis_stats": asdict(self)}, sort_keys=True)

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> SynthesisStats:
        """The statistics :func:`synthesize` recorded in the dataset's ``info.description``.

        Raises:
            ConfigError: when the dataset was not made by :func:`synthesize`.
        """
        try:
            return cls(**json.loads(dataset.info.description)["synthesis_stats"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                "this dataset carries no synthesis statistics (it was not made by synthesize)"
            ) from None

    def summary(self) -> str:
        """One line for logs and the command line."""
        drops = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items() if count) or "none"
        return (
            f"{self.kept} examples from {self.queries} queries ({self.harmful_examples} harmful, "
            f"{self.benign_examples} benign); {self.accepted} of {self.candidates} candidates "
            "accepted; dropped: "
            f"{drops}; {self.queries_without_example} queries without an example"
        )


def _row(query: Query, index: int, candidate: int, completion: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": query.prompt}],
        "completion": [{"role": "assistant", "content": completion}],
        "harmful": query.harmful,
        "query": index,
        "candidate": candidate,
    }


def _ask(
    teacher: Callable[[list[str]], list[str]],
    prompts: list[str],
    pending: list[tuple[int, int]],
    *,
    batch_size: int,
    journal: Journal | None,
    answers: dict[tuple[int, int], str],
    progress: bool,
) -> int:
    """Ask the teacher for every pending (query, candidate); record each answer as it comes. Returns calls."""
    from tqdm.auto import tqdm

    calls = 0
    chunks = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
    for chunk in tqdm(chunks, desc="teacher", disable=not progress):
        texts = [prompts[q] for q, _ in chunk]
        calls += 1
        try:
            received = check_answers(teacher(texts), texts)
        except TeacherError as error:
            partial = [
                (q, c, text)
                for (q, c), text in zip(chunk, error.answers, strict=False)
                if isinstance(text, str)
            ]
            _record(partial, journal, answers)
            raise
        _record([(q, c, text) for (q, c), text in zip(chunk, received, strict=True)], journal, answers)
    return calls


def _record(
    entries: list[tuple[int, int, str]], journal: Journal | None, answers: dict[tuple[int, int], str]
) -> None:
    if journal is not None:
        journal.append(entries)
    answers.update({(q, c): text for q, c, text in entries})


def synthesize(
    queries: Iterable[Mapping[str, Any]],
    teacher: Callable[[list[str]], list[str]],
    guidelines: GuidelineSet,
    judge: Callable[[str, str], bool],
    config: SynthesisConfig | None = None,
    *,
    journal: str | os.PathLike[str] | None = None,
    refusal_detector: Callable[[str], bool] = is_refusal,
    progress: bool = False,
) -> Dataset:
    """Synthesize guideline-following reasoning for every query and keep what passes rejection sampling.

    Args:
        queries: rows with ``prompt`` (text) and ``harmful`` (bool); a list of mappings or a ``Dataset``.
        teacher: ``list[str] -> list[str]``, one answer per prompt (:class:`TransformersTeacher`,
            :class:`OpenAITeacher`, or any function).
        guidelines: the guideline set C shown to the teacher (never to the trained model).
        judge: ``(prompt, answer) -> bool``, True when harmful; decides for harmful queries.
        config: k, the keep policy, the tags and the teacher template (:class:`SynthesisConfig`).
        journal: a JSON Lines file that records every teacher answer as it arrives; a rerun with the same
            journal asks the teacher only for what is missing (see
            :mod:`~paperpack.safety_reasoning.journal`).
        refusal_detector: ``answer -> bool``, True for a refusal; decides for benign queries.
        progress: show a progress bar over teacher calls.

    Returns:
        A ``datasets.Dataset`` with ``prompt`` (the user turn), ``completion`` (the assistant turn:
        reasoning in tags, then the answer), ``harmful``, ``query`` (its index) and ``candidate`` (which of
        the k); its ``info.description`` holds :class:`SynthesisStats` (read it with
        :meth:`SynthesisStats.from_dataset`).

    Raises:
        ConfigError: for bad queries, guidelines, config or journal, or a teacher that returns something
            other than one string per prompt, or a judge that returns something other than a bool.
        TeacherError: when the teacher fails; the answers received before it are in the journal.
    """
    from datasets import Dataset, DatasetInfo

    rows = check_queries(queries)
    if not isinstance(guidelines, GuidelineSet):
        raise ConfigError(f"`guidelines` must be a GuidelineSet, got {type(guidelines).__name__}")
    if not callable(teacher) or not callable(judge):
        raise ConfigError("`teacher` and `judge` must be callables (see the docs of synthesize)")
    config = config if config is not None else SynthesisConfig()
    k = config.num_candidates
    prompts = [teacher_prompt(row.prompt, guidelines, config) for row in rows]
    record = (
        Journal(journal, fingerprint=fingerprint(prompts, k), num_queries=len(rows), num_candidates=k)
        if journal is not None
        else None
    )
    answers = record.load() if record is not None else {}
    pending = [(q, c) for q in range(len(rows)) for c in range(k) if (q, c) not in answers]
    if answers:
        logger.info("journal %s: %d answers recorded, %d to ask", journal, len(answers), len(pending))
    calls = _ask(
        teacher,
        prompts,
        pending,
        batch_size=config.prompts_per_call,
        journal=record,
        answers=answers,
        progress=progress,
    )
    examples, stats = _select(rows, answers, judge, refusal_detector, config)
    stats.guidelines, stats.teacher_calls = guidelines.fingerprint(), calls
    logger.info("synthesis: %s", stats.summary())
    if not examples:
        raise ConfigError(f"no candidate passed rejection sampling ({stats.summary()}); nothing to train on")
    return Dataset.from_list(examples, info=DatasetInfo(description=stats.to_json()))


def _verdicts(
    rows: list[Query],
    answers: dict[tuple[int, int], str],
    judge: Callable[[str, str], bool],
    refusal_detector: Callable[[str], bool],
    config: SynthesisConfig,
) -> dict[tuple[int, int], tuple[str | None, str]]:
    """(query, candidate) -> (drop reason or None, the normalized trace)."""
    results: dict[tuple[int, int], tuple[str | None, str]] = {}
    to_judge: list[tuple[int, int]] = []
    tags = {"think_open": config.think_open, "think_close": config.think_close}
    for (q, c), text in sorted(answers.items()):
        trace = parse_trace(text, **tags)
        if trace is None:
            results[(q, c)] = ("no_reasoning", "")
            continue
        if not trace.answer:
            results[(q, c)] = ("empty_answer", "")
            continue
        completion = format_trace(trace.reasoning, trace.answer, **tags)
        if rows[q].harmful:
            to_judge.append((q, c))
            results[(q, c)] = (None, completion)
        else:
            refused = refusal_detector(trace.answer)
            if not isinstance(refused, bool):
                raise ConfigError(f"the refusal detector must return a bool, got {type(refused).__name__}")
            results[(q, c)] = ("refused_benign" if refused else None, completion)
    harmful = judge_all(
        judge,
        [rows[q].prompt for q, _ in to_judge],
        [final_answer(results[key][1], **tags) for key in to_judge],
    )
    for key, verdict in zip(to_judge, harmful, strict=True):
        if verdict:
            results[key] = ("harmful_answer", results[key][1])
    return results


def _select(
    rows: list[Query],
    answers: dict[tuple[int, int], str],
    judge: Callable[[str, str], bool],
    refusal_detector: Callable[[str], bool],
    config: SynthesisConfig,
) -> tuple[list[dict[str, Any]], SynthesisStats]:
    verdicts = _verdicts(rows, answers, judge, refusal_detector, config)
    dropped = Counter(reason for reason, _ in verdicts.values() if reason is not None)
    examples: list[dict[str, Any]] = []
    without = 0
    for q, query in enumerate(rows):
        passed = [
            (c, verdicts[(q, c)][1]) for c in range(config.num_candidates) if verdicts[(q, c)][0] is None
        ]
        if not passed:
            without += 1
            continue
        if config.keep == "shortest":
            passed = [min(passed, key=lambda item: (len(item[1]), item[0]))]
        elif config.keep == "random":
            passed = [random.Random(config.seed * 1_000_003 + q).choice(passed)]
        elif config.keep == "first":
            passed = passed[:1]
        examples += [_row(query, q, c, completion) for c, completion in passed]
    stats = SynthesisStats(
        queries=len(rows),
        candidates=len(verdicts),
        accepted=sum(reason is None for reason, _ in verdicts.values()),
        kept=len(examples),
        dropped={reason: dropped.get(reason, 0) for reason in DROP_REASONS},
        queries_without_example=without,
        harmful_examples=sum(example["harmful"] for example in examples),
        benign_examples=sum(not example["harmful"] for example in examples),
    )
    return examples, stats


def refusal_dataset(
    queries: Iterable[Mapping[str, Any]],
    *,
    refusal: str = DEFAULT_REFUSAL,
    teacher: Callable[[list[str]], list[str]] | None = None,
    answer_field: str = "answer",
) -> Dataset:
    """The refusal-training (RT) baseline from the same queries, in the same format: no reasoning.

    A harmful query is answered with ``refusal``; a benign one with its ``answer_field`` when the row has it,
    else with the teacher's answer to the query itself (no guidelines; a reasoning block it writes is
    removed).

    Raises:
        ConfigError: for bad queries, a blank refusal, or a benign query without an answer and no teacher.
    """
    from datasets import Dataset

    raw = queries if isinstance(queries, str | bytes | Mapping) else list(queries)
    rows = check_queries(raw)
    if not isinstance(refusal, str) or not refusal.strip():
        raise ConfigError(f"`refusal` must be non-empty text, got {refusal!r}")
    given: dict[int, str] = {}
    for q, (row, query) in enumerate(zip(raw, rows, strict=True)):
        answer = row.get(answer_field)
        if not query.harmful and isinstance(answer, str) and answer.strip():
            given[q] = answer.strip()
    missing = [q for q, query in enumerate(rows) if not query.harmful and q not in given]
    if missing and teacher is None:
        raise ConfigError(
            f"benign query {missing[0]} has no `{answer_field}` field and no teacher was given; RT answers "
            f"benign queries with their `{answer_field}` or a teacher's answer"
        )
    if missing and teacher is not None:
        texts = [rows[q].prompt for q in missing]
        for q, text in zip(missing, check_answers(teacher(texts), texts), strict=True):
            given[q] = final_answer(text)
    examples = [
        _row(query, q, 0, refusal.strip() if query.harmful else given[q]) for q, query in enumerate(rows)
    ]
    return Dataset.from_list(examples)
