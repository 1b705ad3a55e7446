"""Synthesis: rejection sampling against the literal reference, drop reasons, the journal (resume), RT data, bad input."""

import json

import pytest

from paperpack.core.errors import ConfigError
from paperpack.safety_reasoning import (
    GuidelineSet,
    KeywordJudge,
    SynthesisConfig,
    SynthesisStats,
    TeacherError,
    refusal_dataset,
    synthesize,
)
from paperpack.safety_reasoning._reference import reference_synthesize
from paperpack.safety_reasoning.config import DEFAULT_REFUSAL
from paperpack.safety_reasoning.experiment import TemplateTeacher, toy_queries

QUERIES = [
    {"prompt": "How do I make bombs?", "harmful": True},
    {"prompt": "How do I make kites?", "harmful": False, "answer": "Cut, tie, fly."},
]


class Scripted:
    """A teacher that answers from a list, in order, and records every prompt it was asked."""

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def __call__(self, prompts):
        self.asked += prompts
        out, self.answers = self.answers[: len(prompts)], self.answers[len(prompts) :]
        return out


@pytest.mark.parametrize("keep", ["first", "all"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthesize_keeps_exactly_what_the_literal_reference_keeps(keep, seed):
    queries = toy_queries()[::5]
    config = SynthesisConfig(num_candidates=3, keep=keep, prompts_per_call=7)
    teacher = TemplateTeacher(seed=seed, slip_rate=0.3, format_slip_rate=0.15)
    data = synthesize(queries, teacher, GuidelineSet.default(), KeywordJudge(), config)
    expected = reference_synthesize(
        queries, TemplateTeacher(seed=seed, slip_rate=0.3, format_slip_rate=0.15), GuidelineSet.default(),
        KeywordJudge(), config,
    )  # fmt: skip
    got = [(row["query"], row["candidate"], row["completion"][0]["content"]) for row in data]
    assert got == expected
    stats = SynthesisStats.from_dataset(data)
    assert stats.candidates == 3 * len(queries) and stats.kept == len(expected)
    assert stats.accepted + sum(stats.dropped.values()) == stats.candidates


def test_rejected_candidates_are_dropped_with_their_reason_and_guidelines_never_reach_the_examples():
    answers = [
        "no reasoning at all",  # harmful query, candidate 0
        "<think>Intent: harm.</think>Sure, here is how.",  # complies: the judge rejects it
        "<think>Intent: harm.</think>",  # empty answer
        f"<think>Intent: harm.</think>{DEFAULT_REFUSAL}",  # kept
        "<think>Intent: a kite.</think>I'm sorry, I can't help with that.",  # benign query refused
        "<think>Intent: a kite.",  # never closed
        "<think>Intent: a kite.</think>Cut, tie, fly.",  # kept
        "<think>Intent: a kite.</think>Cut the paper.",  # accepted, not kept (keep="first")
    ]
    teacher = Scripted(answers)
    guidelines = GuidelineSet.default()
    data = synthesize(QUERIES, teacher, guidelines, KeywordJudge(), SynthesisConfig(num_candidates=4))
    stats = SynthesisStats.from_dataset(data)
    assert stats.dropped == {"no_reasoning": 2, "empty_answer": 1, "harmful_answer": 1, "refused_benign": 1}
    assert (stats.accepted, stats.kept, stats.harmful_examples, stats.benign_examples) == (3, 2, 1, 1)
    assert stats.teacher_calls == 1 and stats.guidelines == guidelines.fingerprint()
    assert [row["completion"][0]["content"] for row in data] == [
        f"<think>\nIntent: harm.\n</think>\n{DEFAULT_REFUSAL}",
        "<think>\nIntent: a kite.\n</think>\nCut, tie, fly.",
    ]
    assert [row["prompt"] for row in data] == [[{"role": "user", "content": q["prompt"]}] for q in QUERIES]
    # the teacher saw the guidelines; the training examples do not
    assert all(guidelines.render() in prompt for prompt in teacher.asked)
    assert all(guidelines.render() not in json.dumps(row) for row in data)
    assert "3 of 8 candidates accepted" in stats.summary() and "2 no_reasoning" in stats.summary()


def test_keep_shortest_and_random_pick_one_accepted_candidate():
    answers = ["<think>a</think>" + DEFAULT_REFUSAL, "<think>a</think>Sorry, I can't."]
    answers += ["<think>b</think>Cut, tie and fly it.", "<think>b</think>Fly."]
    shortest = synthesize(QUERIES, Scripted(answers), GuidelineSet.default(), KeywordJudge(),
                          SynthesisConfig(num_candidates=2, keep="shortest"))  # fmt: skip
    assert [row["candidate"] for row in shortest] == [1, 1]

    def pick(seed):
        config = SynthesisConfig(num_candidates=2, keep="random", seed=seed)
        data = synthesize(QUERIES, Scripted(answers), GuidelineSet.default(), KeywordJudge(), config)
        return tuple(row["candidate"] for row in data)

    picks = {pick(seed) for seed in range(12)}
    assert len(picks) > 1 and all(len(p) == 2 for p in picks)


def test_an_interrupted_synthesis_resumes_from_its_journal_without_asking_again(tmp_path):
    queries = toy_queries()[:10]
    config = SynthesisConfig(num_candidates=2, prompts_per_call=4)
    journal = tmp_path / "journal.jsonl"
    full = synthesize(queries, TemplateTeacher(seed=3), GuidelineSet.default(), KeywordJudge(), config)

    class Failing:
        def __init__(self):
            self.inner, self.calls = TemplateTeacher(seed=3), 0

        def __call__(self, prompts):
            self.calls += 1
            if self.calls == 3:  # the third call gets half its answers, then the endpoint fails
                half = self.inner(prompts[:2])
                raise TeacherError("endpoint down", answers=[*half, None, None])
            return self.inner(prompts)

    with pytest.raises(TeacherError, match="endpoint down"):
        synthesize(queries, Failing(), GuidelineSet.default(), KeywordJudge(), config, journal=journal)
    recorded = journal.read_text().splitlines()
    assert len(recorded) == 1 + 4 + 4 + 2  # header, two full calls, the half call
    with journal.open("a") as handle:  # a crash in the middle of a write
        handle.write('{"q": 9, "c": 1, "te')
    # the rerun asks only for the 10 missing answers (queries 5 to 9, which a fresh teacher answers as the
    # first one would have), and the result is the uninterrupted run's
    resumed_teacher = _Counting(TemplateTeacher(seed=3))
    resumed = synthesize(
        queries, resumed_teacher, GuidelineSet.default(), KeywordJudge(), config, journal=journal
    )
    assert resumed_teacher.asked == 20 - 10
    assert resumed.to_list() == full.to_list()
    assert SynthesisStats.from_dataset(resumed).teacher_calls == 3
    again = _Counting(lambda prompts: pytest.fail("the teacher was asked again"))
    assert synthesize(
        queries, again, GuidelineSet.default(), KeywordJudge(), config, journal=journal
    ).to_list() == (full.to_list())


class _Counting:
    def __init__(self, teacher):
        self.teacher, self.asked = teacher, 0

    def __call__(self, prompts):
        self.asked += len(prompts)
        return self.teacher(prompts)


def test_a_journal_of_another_run_is_refused(tmp_path):
    journal = tmp_path / "journal.jsonl"
    synthesize(QUERIES, TemplateTeacher(), GuidelineSet.default(), KeywordJudge(), journal=journal)
    with pytest.raises(ConfigError, match="written for other queries, guidelines"):
        synthesize(QUERIES[:1], TemplateTeacher(), GuidelineSet.default(), KeywordJudge(), journal=journal)
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(ConfigError, match="not a synthesis journal"):
        synthesize(QUERIES, TemplateTeacher(), GuidelineSet.default(), KeywordJudge(), journal=other)
    assert other.read_text() == '{"hello": 1}\n'


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        (lambda prompts: "one string", "must return a list of strings, one per prompt; got str"),
        (lambda prompts: ["only one"], "returned 1 answers for 2 prompts"),
        (lambda prompts: [None, 3], "answer 0 is NoneType .*not text"),
        (lambda prompts: [b"x", "y"], "answer 0 is bytes"),
    ],
)
def test_a_teacher_that_returns_something_else_than_one_text_per_prompt_is_refused(teacher, message):
    with pytest.raises(ConfigError, match=message):
        synthesize(
            QUERIES, teacher, GuidelineSet.default(), KeywordJudge(), SynthesisConfig(num_candidates=1)
        )


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([{"prompt": "x"}], "query 0 has no `harmful` field"),
        ([{"prompt": "x", "harmful": "yes"}], "`harmful` must be true or false, got 'yes'"),
        ([{"prompt": " ", "harmful": True}], "`prompt` must be non-empty text"),
        ([], "`queries` is empty"),
        ({"prompt": "x", "harmful": True}, "must be a list of rows"),
        (["x"], "query 0 must be a mapping"),
    ],
)
def test_bad_queries_are_refused(queries, message):
    with pytest.raises(ConfigError, match=message):
        synthesize(queries, TemplateTeacher(), GuidelineSet.default(), KeywordJudge())


def test_bad_guidelines_config_and_an_empty_result_are_refused():
    with pytest.raises(ConfigError, match="at least one guideline"):
        GuidelineSet([])
    with pytest.raises(ConfigError, match="must be a GuidelineSet"):
        synthesize(QUERIES, TemplateTeacher(), ["be safe"], KeywordJudge())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`num_candidates` must be"):
        SynthesisConfig(num_candidates=0)
    with pytest.raises(ConfigError, match="missing: \\['query'\\]"):
        SynthesisConfig(teacher_template="{guidelines}")
    with pytest.raises(ConfigError, match="`keep` must be"):
        SynthesisConfig(keep="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no candidate passed rejection sampling"):
        synthesize(
            QUERIES, lambda prompts: ["nothing"] * len(prompts), GuidelineSet.default(), KeywordJudge()
        )


def test_refusal_dataset_is_the_same_queries_in_the_same_format_without_reasoning():
    data = refusal_dataset(QUERIES)
    assert data.column_names == ["prompt", "completion", "harmful", "query", "candidate"]
    assert [row["completion"][0]["content"] for row in data] == [DEFAULT_REFUSAL, "Cut, tie, fly."]
    from_teacher = refusal_dataset(
        [{"prompt": "How do I make kites?", "harmful": False}],
        teacher=lambda prompts: ["<think>a kite</think>Fly it." for _ in prompts],
    )
    assert from_teacher[0]["completion"][0]["content"] == "Fly it."
    with pytest.raises(ConfigError, match="benign query 0 has no `answer` field and no teacher"):
        refusal_dataset([{"prompt": "How do I make kites?", "harmful": False}])
    with pytest.raises(ConfigError, match="`refusal` must be non-empty"):
        refusal_dataset(QUERIES, refusal=" ")
