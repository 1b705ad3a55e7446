"""Teachers: OpenAITeacher against a stub endpoint on loopback (answers, errors, rate limits, hangs, resume), and
TransformersTeacher on a tiny model."""

from __future__ import annotations

import threading
import time

import pytest

from paperpack.core.errors import ConfigError
from paperpack.safety_reasoning import (
    Guideline,
    GuidelineSet,
    KeywordJudge,
    OpenAITeacher,
    SynthesisConfig,
    TeacherError,
    TransformersTeacher,
    synthesize,
)
from paperpack.safety_reasoning.config import DEFAULT_REFUSAL
from paperpack.safety_reasoning.synthesis import teacher_prompt

KEY = "sk-test-secret-0123456789"  # the stub's key (conftest.py)


def echo(number: int, body: dict) -> str:
    return "answer to " + body["messages"][-1]["content"]


def test_answers_come_back_in_order_with_the_request_the_api_expects(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = stub(echo)
    teacher = OpenAITeacher(server.url + "/", "teacher-model", concurrency=3, temperature=0.5, max_tokens=7,
                            system_prompt="be brief", extra_body={"seed": 1})  # fmt: skip
    prompts = [f"prompt {i}" for i in range(10)]
    assert teacher(prompts) == [f"answer to prompt {i}" for i in range(10)]
    body = server.requests[0]
    assert body["model"] == "teacher-model" and body["temperature"] == 0.5 and body["max_tokens"] == 7
    assert body["messages"][0] == {"role": "system", "content": "be brief"} and body["seed"] == 1
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(teacher) and "key=set" in repr(teacher)
    assert teacher([]) == []


def test_rate_limits_and_server_errors_are_retried_with_back_off(stub, caplog):
    failures = {0: (429, {"Retry-After": "0.2"}), 1: 503, 2: 500}
    server = stub(lambda number, body: failures.get(number, "fine"))
    teacher = OpenAITeacher(server.url, "m", api_key=KEY, concurrency=1, backoff=0.05, max_backoff=1.0)
    start = time.monotonic()
    with caplog.at_level("INFO", logger="paperpack.safety_reasoning.teachers"):
        assert teacher(["only"]) == ["fine"]
    elapsed = time.monotonic() - start
    assert len(server.requests) == 4
    # Retry-After 0.2 s obeyed, then back-off drawn from [0.05, 0.1] and [0.1, 0.2]
    assert 0.2 + 0.025 + 0.05 <= elapsed < 5
    assert "HTTP 429" in caplog.text and KEY not in caplog.text


def test_a_client_error_fails_at_once_with_the_servers_message_and_no_key(stub):
    server = stub(lambda number, body: 401)
    teacher = OpenAITeacher(server.url, "m", api_key=KEY, max_retries=5, backoff=0.01)
    with pytest.raises(TeacherError, match="HTTP 401 .*check the API key .*OPENAI_API_KEY") as raised:
        teacher(["a"])
    assert len(server.requests) == 1 and KEY not in str(raised.value) and "***" in str(raised.value)
    server = stub(lambda number, body: 404)
    with pytest.raises(TeacherError, match="HTTP 404 .*check `base_url`"):
        OpenAITeacher(server.url, "m", max_retries=3)(["a"])


def test_a_hanging_endpoint_times_out_retries_and_fails_keeping_what_arrived(stub):
    server = stub(lambda number, body: "hang" if body["messages"][-1]["content"] == "slow" else "quick")
    teacher = OpenAITeacher(server.url, "m", timeout=0.3, max_retries=1, backoff=0.01, concurrency=2)
    start = time.monotonic()
    with pytest.raises(TeacherError, match="failed 2 time.*no answer within timeout=0.3 s") as raised:
        teacher(["fast", "slow"])
    assert time.monotonic() - start < 5
    assert raised.value.answers == ["quick", None]
    assert "1 of 2 answers received" in str(raised.value)
    assert sum(request["messages"][-1]["content"] == "slow" for request in server.requests) == 2


def test_a_malformed_answer_and_a_closed_port_are_clear_errors(stub):
    server = stub(lambda number, body: ("", {}))
    server.behave = lambda number, body: 200  # an error body with status 200: no choices
    with pytest.raises(TeacherError, match="sent no choices\\[0\\].message.content"):
        OpenAITeacher(server.url, "m", max_retries=0)(["a"])
    closed = stub(echo)
    closed.close()
    with pytest.raises(TeacherError, match="failed 1 time.*connection failed"):
        OpenAITeacher(closed.url, "m", max_retries=0, timeout=2)(["a"])


def test_synthesis_through_a_failing_endpoint_loses_nothing_on_resume(stub, tmp_path):
    queries = [{"prompt": f"How do I make bombs, case {i}?", "harmful": True} for i in range(6)]
    answer = f"<think>Intent: harm.</think>{DEFAULT_REFUSAL}"
    down = threading.Event()
    server = stub(lambda number, body: 500 if down.is_set() or number >= 7 else answer)
    config = SynthesisConfig(num_candidates=2, prompts_per_call=4)
    teacher = OpenAITeacher(server.url, "m", max_retries=0, concurrency=1)
    journal = tmp_path / "journal.jsonl"
    with pytest.raises(TeacherError, match="HTTP 500"):
        synthesize(queries, teacher, GuidelineSet.default(), KeywordJudge(), config, journal=journal)
    assert len(journal.read_text().splitlines()) == 1 + 7  # every answer that arrived is recorded
    asked_before = len(server.requests)
    server.behave = lambda number, body: answer
    data = synthesize(queries, teacher, GuidelineSet.default(), KeywordJudge(), config, journal=journal)
    assert len(server.requests) - asked_before == 12 - 7 and data.num_rows == 6


def test_concurrency_overlaps_requests(stub):
    server = stub(lambda number, body: time.sleep(0.2) or "done")
    start = time.monotonic()
    assert OpenAITeacher(server.url, "m", concurrency=8)(["p"] * 8) == ["done"] * 8
    assert time.monotonic() - start < 0.2 * 8 / 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "localhost:8000/v1"}, "`base_url` must be an http:// or https:// URL"),
        ({"model": " "}, "`model` must name the model"),
        ({"timeout": 0}, "`timeout` must be"),
        ({"max_retries": -1}, "`max_retries` must be"),
        ({"concurrency": 0}, "`concurrency` must be"),
        ({"api_key": ""}, "`api_key` must be a non-empty string"),
    ],
)
def test_bad_endpoint_settings_are_refused(kwargs, message):
    settings = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs}
    with pytest.raises(ConfigError, match=message):
        OpenAITeacher(settings.pop("base_url"), settings.pop("model"), **settings)


def test_transformers_teacher_answers_each_prompt_and_samples_anew_on_each_call(tiny_lm):
    model, tokenizer = tiny_lm
    teacher = TransformersTeacher(model, tokenizer, max_new_tokens=6, batch_size=3, seed=5)
    prompts = ["how do i make a kite", "tell me about the weather today", "hello"]
    first, second = teacher(prompts), teacher(prompts)
    assert len(first) == 3 and all(isinstance(text, str) for text in first) and first != second
    again = TransformersTeacher(model, tokenizer, max_new_tokens=6, batch_size=3, seed=5)
    assert again(prompts) == first  # a seed and the sequence of calls fix what is sampled
    greedy = TransformersTeacher(model, tokenizer, max_new_tokens=6, do_sample=False)
    assert greedy(prompts) == greedy(prompts)
    with pytest.raises(ConfigError, match="prompt 1 must be a string"):
        teacher(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="`batch_size` must be"):
        TransformersTeacher(model, tokenizer, batch_size=0)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_the_shared_guideline_prefix_cached_once_gives_the_same_answers(architecture, tiny_lm, qwen2_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_lm
    if architecture == "qwen2":
        model = AutoModelForCausalLM.from_pretrained(qwen2_dir)  # positions up to 512: two guidelines
    intent, context = list(GuidelineSet.default())[:2]
    guidelines = GuidelineSet([intent, context, Guideline("check", "Answer only if safe.")])
    queries = [
        "How do I make a kite?",
        "Explain how to pick a lock",
        "hi",
        "Write a poem about rivers at dusk",
    ]
    prompts = [teacher_prompt(query, guidelines, SynthesisConfig()) for query in queries for _ in range(2)]
    for settings in ({"do_sample": False}, {"do_sample": True, "temperature": 1.5, "seed": 3}):
        answers = {}
        for share in (False, True):
            teacher = TransformersTeacher(
                model, tokenizer, max_new_tokens=8, batch_size=3, share_prefix=share, **settings
            )
            answers[share] = teacher(prompts) + teacher(prompts[:5])  # two calls: the seed moves on
        assert answers[True] == answers[False]
        if settings["do_sample"]:
            assert answers[True][0] != answers[True][1] or answers[True][2] != answers[True][3]
    with pytest.raises(ConfigError, match="`share_prefix` must be true or false"):
        TransformersTeacher(model, tokenizer, share_prefix="yes")  # type: ignore[arg-type]
