"""The trace format: reasoning in tags before the answer, parsed back, and through the chat template."""

import pytest

from paperpack.core.errors import ConfigError
from paperpack.safety_reasoning.trace import Trace, check_tags, final_answer, format_trace, parse_trace


def test_format_and_parse_round_trip_with_any_tags():
    for tags in ({}, {"think_open": "<reasoning>", "think_close": "</reasoning>"}):
        text = format_trace("  Intent: a kite.\nHarm: none.  ", " Sure, here. ", **tags)
        assert parse_trace(text, **tags) == Trace("Intent: a kite.\nHarm: none.", "Sure, here.")
        assert final_answer(text, **tags) == "Sure, here."


def test_parse_tolerates_a_preamble_and_refuses_what_is_not_a_trace():
    assert parse_trace("Okay.\n<think>r</think>a") == Trace("r", "a")
    assert parse_trace("no tags at all") is None
    assert parse_trace("<think>never closed") is None
    assert parse_trace("</think> closed first <think>") is None
    assert parse_trace("<think>  </think>answer") is None
    assert parse_trace("<think>a <think> b</think>c") is None
    assert parse_trace("<think>r</think>") == Trace("r", "")


def test_final_answer_judges_an_unfinished_reasoning_whole():
    assert final_answer("<think>I will explain how to") == "I will explain how to"
    assert final_answer("plain answer") == "plain answer"
    assert final_answer("<think>a</think>b</think>c") == "c"


def test_bad_tags_and_reasoning_are_refused():
    with pytest.raises(ConfigError, match="`think_open` must be a non-empty tag"):
        check_tags(" ", "</think>")
    with pytest.raises(ConfigError, match="must differ"):
        check_tags("<t>", "<t>")
    with pytest.raises(ConfigError, match="must not be empty"):
        format_trace(" ", "answer")
    with pytest.raises(ConfigError, match="must not contain the tags"):
        format_trace("a </think> b", "answer")


def test_the_trace_round_trips_through_the_chat_template(tiny_lm):
    """The completion survives the chat template (as SFTTrainer renders it) and the tokenizer, and parses back."""
    _, tokenizer = tiny_lm
    completion = format_trace("Intent: the user wants a kite.\nHarm: none.", "Sure. Cut, tie, fly.")
    messages = [
        {"role": "user", "content": "How do I make a kite?"},
        {"role": "assistant", "content": completion},
    ]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt)
    ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert parse_trace(decoded) == Trace(
        "Intent: the user wants a kite.\nHarm: none.", "Sure. Cut, tie, fly."
    )
    assert tokenizer.decode(ids).rstrip().endswith(tokenizer.eos_token)
